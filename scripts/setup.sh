#!/usr/bin/env bash
# Installs what building and testing Belfry needs on Debian or Ubuntu, skipping what is
# already there: apt packages (as root, or with sudo), a Rust toolchain new enough for the
# workspace (rustup, if cargo is missing or too old), and with --test the npm packages of
# the interop tests and the benchmark's Node peer from their lockfiles.
set -euo pipefail
cd "$(dirname "$0")/.."

want_tests=0
[ "${1:-}" = "--test" ] && want_tests=1

apt_packages=(build-essential pkg-config libssl-dev ca-certificates curl
  # Tauri 2 (the tray app)
  libwebkit2gtk-4.1-dev libgtk-3-dev libayatana-appindicator3-dev librsvg2-dev libxdo-dev)
# Tests: the JavaScript client, a headless desktop with a notification daemon, nginx in
# front of the hub with the configuration in deploy/nginx/, and the PostgreSQL and Redis
# servers the multi-node tests start for themselves (on ports of their own).
[ "$want_tests" = 1 ] && apt_packages+=(nodejs npm xvfb xauth dbus dbus-x11 dunst libglib2.0-bin webkit2gtk-driver xdg-utils nginx postgresql redis-server)

missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# A node from elsewhere (nvm, nodesource) is fine too.
if command -v node >/dev/null && command -v npm >/dev/null; then
  filtered=()
  for p in "${missing[@]}"; do
    case "$p" in nodejs|npm) ;; *) filtered+=("$p") ;; esac
  done
  missing=("${filtered[@]+"${filtered[@]}"}")
fi
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Rust: the workspace needs rustc >= 1.94 (edition 2024, socketioxide 0.18.9).
need_minor=94
have_minor=0
if command -v rustc >/dev/null; then
  have_minor=$(rustc --version | sed -E 's/^rustc 1\.([0-9]+).*/\1/')
fi
if [ "$have_minor" -lt "$need_minor" ]; then
  if command -v rustup >/dev/null; then
    rustup toolchain install stable --profile minimal
    rustup default stable
  else
    echo "setup: installing Rust with rustup"
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
  fi
fi

if [ "$want_tests" = 1 ] && command -v rustup >/dev/null; then
  # make lint needs these; rustup's minimal profile leaves them out.
  cargo fmt --version >/dev/null 2>&1 || rustup component add rustfmt
  cargo clippy --version >/dev/null 2>&1 || rustup component add clippy
fi

if [ "$want_tests" = 1 ] && ! command -v tauri-driver >/dev/null && [ ! -x "$HOME/.cargo/bin/tauri-driver" ]; then
  # The WebDriver front for the app's webview (in front of Debian's WebKitWebDriver).
  cargo install tauri-driver --version '^2' --locked
fi

if [ "$want_tests" = 1 ]; then
  # The interop tests' socket.io-client, and the benchmark's Node.js reference peer.
  for dir in tests/interop bench/peer-node; do
    if [ ! -d "$dir/node_modules" ] || [ "$dir/package-lock.json" -nt "$dir/node_modules" ]; then
      (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
    fi
  done
fi

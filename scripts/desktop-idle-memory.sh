#!/usr/bin/env bash
# Measures the release tray app at rest: started hidden (window closed) on a headless
# desktop (Xvfb, its own D-Bus session, dunst), connected to a local hub, after a short
# settling time. Prints RSS and private memory (smaps_rollup) of the app and of any child
# process (WebKit helpers exist only while the window is open), and its CPU time over
# the quiet period. Usage: scripts/desktop-idle-memory.sh [settle-seconds]
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"
hub="$target/release/belfry-server"
app="$target/release/belfry-desktop"
settle="${1:-30}"
[ -x "$hub" ] && [ -x "$app" ] || { echo "build first: cargo build --release -p belfry-server -p belfry-desktop"; exit 1; }

work=$(mktemp -d)
display=":$((200 + RANDOM % 300))"
cleanup() { kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

Xvfb "$display" -nolisten tcp -screen 0 1280x800x24 >/dev/null 2>&1 &
sleep 1
export DISPLAY="$display"
eval "$(dbus-launch --sh-syntax)"
dunst >/dev/null 2>&1 &
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$hub" serve --data-dir "$work/hub" --listen "127.0.0.1:$port" >/dev/null 2>&1 &
sleep 1
token=$("$hub" token --data-dir "$work/hub" --user idle)
BELFRY_DESKTOP_DATA_DIR="$work/app" RUST_LOG=warn "$app" --hidden --server "http://127.0.0.1:$port" --token "$token" &
pid=$!
sleep 5
"$hub" publish --data-dir "$work/hub" --server "http://127.0.0.1:$port" --to user:idle --title "one" >/dev/null
sleep "$settle"

ticks=$(getconf CLK_TCK)
cpu_before=$(awk '{print $14 + $15}' "/proc/$pid/stat")
sleep 10
cpu_after=$(awk '{print $14 + $15}' "/proc/$pid/stat")

report() {
  local p=$1
  local rss private dirty
  rss=$(awk '/^VmRSS/ {print $2}' "/proc/$p/status")
  private=$(awk '/^Private_(Clean|Dirty)/ {s += $2} END {print s}' "/proc/$p/smaps_rollup")
  dirty=$(awk '/^Private_Dirty/ {s += $2} END {print s}' "/proc/$p/smaps_rollup")
  # Private_Clean is mostly library pages no other process happens to map (WebKit,
  # Mesa's LLVM): shared in principle. Private_Dirty is the app's own memory.
  printf '%-16s pid %-7s RSS %7s KiB   private %7s KiB (dirty %s KiB)\n' \
    "$(tr -d '\0' < "/proc/$p/comm")" "$p" "$rss" "$private" "$dirty"
}
echo "Belfry tray app, release, window closed, ${settle}s after start:"
report "$pid"
for child in $(pgrep -P "$pid" || true); do report "$child"; done
echo "CPU over 10 s at rest: $(( (cpu_after - cpu_before) * 1000 / ticks )) ms"

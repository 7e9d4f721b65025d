#!/usr/bin/env bash
# `make run`: the hub on its embedded SQLite and, on a desktop session, the tray app
# already connected to it with a fresh demo token; a welcome notification follows so a
# newcomer sees one within a minute. Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"
data="${DATA_DIR:-$PWD/belfry-data}"
listen="${LISTEN:-127.0.0.1:8080}"
url="http://$listen"
hub="$target/release/belfry-server"
app="$target/release/belfry-desktop"

with_app=1
if [ -z "${DISPLAY:-}${WAYLAND_DISPLAY:-}" ] || [ "${BELFRY_NO_APP:-}" = 1 ]; then
  with_app=0
fi

if [ "$with_app" = 1 ]; then
  cargo build --release -p belfry-server -p belfry-desktop
else
  cargo build --release -p belfry-server
fi

"$hub" serve --data-dir "$data" --listen "$listen" &
hub_pid=$!
trap 'kill $hub_pid 2>/dev/null; [ -n "${app_pid:-}" ] && kill $app_pid 2>/dev/null; wait' EXIT INT TERM

for _ in $(seq 1 100); do
  curl -fsS "$url/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done

key=$(head -1 "$data/publish-key" 2>/dev/null || true)
user="${BELFRY_DEMO_USER:-$(id -un)}"
user=$(printf '%s' "$user" | tr -c 'A-Za-z0-9._@+-' '_')
token=$("$hub" token --data-dir "$data" --user "$user" --ttl 30d)

echo
echo "Belfry hub: $url (data in $data)"
echo "Publish to yourself:"
echo "  $hub publish --data-dir $data --server $url --to user:$user --title 'Hello from the shell'"
echo "  curl -s $url/api/v1/notifications -H 'Authorization: Bearer $key' \\"
echo "       -H 'Content-Type: application/json' -d '{\"to\": [\"user:$user\"], \"title\": \"Hello\"}'"

if [ "$with_app" = 1 ]; then
  BELFRY_DESKTOP_DATA_DIR="${BELFRY_DESKTOP_DATA_DIR:-$data/desktop}" \
    "$app" --server "$url" --token "$token" &
  app_pid=$!
  echo "Tray app started for user:$user (its window opens; closing it keeps Belfry in the tray)."
  sleep 3
  "$hub" publish --data-dir "$data" --server "$url" --to "user:$user" \
    --title "Welcome to Belfry" --body "This came from your hub. Publish more with the commands above." \
    --priority high --url "$url/healthz" >/dev/null
else
  echo "No desktop session: running the hub only. A user token for $user:"
  echo "  $token"
fi
wait $hub_pid

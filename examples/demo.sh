#!/usr/bin/env bash
# The demo, end to end: builds the client and the hello example app, starts the
# app on a free loopback port, runs the real `terminalwire` client against it,
# and stops the app.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "==> building (release)"
cargo build --release --quiet -p terminalwire-client -p hello
bin=target/release

log=$(mktemp)
"$bin/hello" --listen 127.0.0.1:0 >"$log.out" 2>"$log" &
server=$!
cleanup() {
    kill -TERM "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
    rm -f "$log" "$log.out"
}
trap cleanup EXIT

# The app's first stdout line is `listening on ws://ADDR/terminal`.
url=""
for _ in $(seq 100); do
    if line=$(head -n1 "$log.out" 2>/dev/null) && [[ $line == "listening on "* ]]; then
        url=${line#listening on }
        break
    fi
    if ! kill -0 "$server" 2>/dev/null; then
        echo "the hello app failed to start:" >&2
        cat "$log" >&2
        exit 1
    fi
    sleep 0.05
done
[[ -n $url ]] || { echo "the hello app did not announce its address" >&2; exit 1; }
echo "==> the hello app is listening on $url"

run() {
    echo
    echo "\$ terminalwire $url $*"
    local status=0
    "$bin/terminalwire" "$url" "$@" || status=$?
    echo "(exit status $status)"
}

run hello World
run hello World --shout
run --help
echo "Ada" | run ask
run whoami
echo
echo "\$ terminalwire $url stream --bytes 100000000 | wc -c"
time "$bin/terminalwire" "$url" stream --bytes 100000000 | wc -c
run frobnicate   # a usage error, rendered by the app's clap on stderr

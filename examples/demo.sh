#!/usr/bin/env bash
# The tour, end to end on loopback: builds the client and the `notes` example
# app, starts the app on a free port, installs its launcher into a temporary
# terminalwire home, and runs a few commands through the real client: a
# browser login (approved by a stand-in "browser"), notes, an export that is
# denied until granted, an import from a pipe. Everything lives in a
# temporary folder that is removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "==> building (release): the terminalwire client and the notes app"
cargo build --release --quiet -p terminalwire-client -p notes
# Where cargo put them (CARGO_TARGET_DIR or build.target-dir may move it).
bin=$(cargo metadata --format-version 1 --no-deps | sed 's/.*"target_directory":"\([^"]*\)".*/\1/')/release

tour=$(mktemp -d)
server=""
cleanup() {
    if [[ -n $server ]]; then
        kill -TERM "$server" 2>/dev/null || true
        wait "$server" 2>/dev/null || true
    fi
    rm -rf "$tour"
}
trap cleanup EXIT

export TERMINALWIRE_HOME=$tour/terminalwire   # the client's grants, pins, launchers
export HOME=$tour/home                        # what `~` means to the client
mkdir -p "$HOME"

"$bin/notes" --listen 127.0.0.1:0 --data "$tour/data" >"$tour/server.out" 2>"$tour/server.log" &
server=$!
# The app's first stdout line is `listening on ws://ADDR/terminal`.
url=""
for _ in $(seq 200); do
    if line=$(head -n1 "$tour/server.out" 2>/dev/null) && [[ $line == "listening on "* ]]; then
        url=${line#listening on }
        break
    fi
    kill -0 "$server" 2>/dev/null || { echo "the notes app failed to start:" >&2; cat "$tour/server.log" >&2; exit 1; }
    sleep 0.05
done
[[ -n $url ]] || { echo "the notes app did not announce its address" >&2; exit 1; }
authority=${url#ws://}
authority=${authority%%/*}
echo "==> the notes app is listening on $url"

# A stand-in browser: approves the login page it is asked to open, as the
# user would by typing the code `login` shows in the terminal and clicking
# "Approve" (a POST of the page's form). It reads the code where the tour
# copies the terminal's stderr (`login.err`, below).
cat >"$tour/browser.sh" <<'BROWSER'
#!/usr/bin/env bash
url=$1
hostport=${url#http://}; hostport=${hostport%%/*}
token=${url##*t=}
log=${TERMINALWIRE_HOME%/*}/login.err
code=""
for _ in $(seq 100); do
    code=$(sed -n 's/^Your login code is \([A-Z0-9-]*\):.*/\1/p' "$log" 2>/dev/null | tail -n1)
    [[ -n $code ]] && break
    sleep 0.05
done
body="t=$token&code=$code&name=demo&passphrase=&decision=approve"
exec 3<>"/dev/tcp/${hostport%:*}/${hostport##*:}"
printf 'POST /login/approve HTTP/1.1\r\nHost: %s\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s' \
    "$hostport" "${#body}" "$body" >&3
head -n1 <&3 | sed 's/^/(browser) approved the login: /' >&2
BROWSER
chmod +x "$tour/browser.sh"
export TERMINALWIRE_BROWSER=$tour/browser.sh

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }
run() {
    step "$*"
    local status=0
    "$@" || status=$?
    echo "(exit status $status)"
}

# The client's two programs (a launcher runs `terminalwire-exec`), not the
# whole of target/release, whose app server binary is also called `notes`.
mkdir -p "$tour/bin"
ln -s "$bin/terminalwire" "$bin/terminalwire-exec" "$tour/bin/"
export PATH=$TERMINALWIRE_HOME/bin:$tour/bin:$PATH
run terminalwire install "$url" --name notes
step "notes login"
# Its stderr also to login.err, where the stand-in browser reads the code.
notes login 2> >(tee "$tour/login.err" >&2)
echo "(exit status 0)"
run notes whoami
run notes new "Buy milk" --body "two litres, semi-skimmed"
run notes new "Call Ada"
run notes list
mkdir -p "$HOME/exports"
run notes export ~/exports/notes.md
run terminalwire entitlement grant "$authority" path '~/exports/**' --write
run notes export ~/exports/notes.md
step "cat ~/exports/notes.md"
cat "$HOME/exports/notes.md"
step "printf 'Water plants\\tthe ficus too\\n' | notes import -"
printf 'Water plants\tthe ficus too\n' | notes import - && echo "(exit status 0)"
run notes list
run terminalwire entitlement list "$authority"
run terminalwire audit "$authority"
echo
echo "==> tour done; everything it wrote was in $tour (now removed)"

#!/usr/bin/env bash
# The benchmarks: builds the release client and the bench, then runs every
# figure and writes BENCHMARKS.md at the workspace root (a few minutes).
#
#   bash bench/run.sh            # full run → BENCHMARKS.md
#   bash bench/run.sh --quick    # small sizes, under a minute → target/release/bench-quick.md
#   bash bench/run.sh --figure 2 # only figure 2 (repeatable); --help for more
#
# The bench starts and stops its own servers on 127.0.0.1 (the bench app, a
# raw WebSocket server, an unprivileged sshd; it installs openssh-server with
# apt-get when sshd is missing and it runs as root, unless --no-ssh-install).
#
# Figure 6 also measures the end-to-end encryption off. For it, this script
# builds a second pair of release binaries (`terminalwire`, `terminalwire-bench`)
# with the bench-only, INSECURE feature terminalwire-protocol/insecure-plaintext-bench
# in their own target folder, TARGET/plaintext (TARGET: $CARGO_TARGET_DIR, else
# ./target), so they can never replace the real ones; the bench finds them
# there (or with --plaintext-dir DIR). Skipped when --figure selects only
# other figures.
set -euo pipefail
cd "$(dirname "$0")/.."

target="${CARGO_TARGET_DIR:-target}"

# Does this run include figure 6? (All figures unless --figure says otherwise;
# not for subcommands such as `load`.)
plaintext=yes
figures=()
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
    case "${args[i]}" in
        --figure) figures+=("${args[i + 1]:-}") ;;
        --figure=*) figures+=("${args[i]#--figure=}") ;;
        --help | -h | --version | -V | --plaintext-dir | --plaintext-dir=*) plaintext=no ;;
    esac
done
if ((${#args[@]})) && [[ ${args[0]} != -* ]]; then
    plaintext=no
fi
if ((${#figures[@]})) && [[ $plaintext == yes ]]; then
    plaintext=no
    for figure in "${figures[@]}"; do
        [[ $figure == 6 ]] && plaintext=yes
    done
fi

cargo build --release --quiet -p terminalwire-client -p terminalwire-bench
if [[ $plaintext == yes ]]; then
    CARGO_TARGET_DIR="$target/plaintext" cargo build --release --quiet \
        -p terminalwire-client -p terminalwire-bench \
        --features terminalwire-protocol/insecure-plaintext-bench
fi
# 10 000 idle sessions need as many open files in the server and in the bench.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
exec cargo run --release --quiet -p terminalwire-bench -- "$@"

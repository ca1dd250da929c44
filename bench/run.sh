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
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --quiet -p terminalwire-client -p terminalwire-bench
# 10 000 idle sessions need as many open files in the server and in the bench.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
exec cargo run --release --quiet -p terminalwire-bench -- "$@"

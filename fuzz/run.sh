#!/usr/bin/env bash
# Build every fuzz target, then run each for a bounded time.
#
#   bash fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]
#
# Defaults: 20 seconds, all targets. Needs cargo-fuzz (`cargo install
# cargo-fuzz --locked`); nightly features come from RUSTC_BOOTSTRAP=1, so the
# stable toolchain does. Without a sanitizer (the fuzzed crates forbid unsafe
# code), which builds and runs about twice as fast; set FUZZ_SANITIZER=address
# to change that. New inputs go to fuzz/corpus/<target>, crashes to
# fuzz/artifacts/<target>; both are ignored by git. Exits non-zero on the
# first target that fails, after printing the end of its log.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-20}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(decode_client_frame decode_server_frame secure_open handshake_responder policy_resolve client_session server_session)
fi
sanitizer=${FUZZ_SANITIZER:-none}
# A memory bound for each target, checked about once a second: the session
# targets peak near 80 MB, so a queue or buffer that a peer's frames can
# grow without bound fails here (libFuzzer's default is 2 048). Checked by
# hand with a limit of 60: "out-of-memory (used: 76Mb; limit: 60Mb)".
rss_limit_mb=${FUZZ_RSS_LIMIT_MB:-512}
export RUSTC_BOOTSTRAP=1

cargo fuzz build -s "$sanitizer"
for target in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$target"
    extra=()
    case $target in decode_* | *_session) extra=(-dict=fuzz/frames.dict) ;; esac
    log=$(mktemp)
    if cargo fuzz run -s "$sanitizer" "$target" "fuzz/corpus/$target" "fuzz/seeds/$target" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb="$rss_limit_mb" -print_final_stats=1 "${extra[@]}" >"$log" 2>&1; then
        echo "fuzz $target: $(grep -E '^#[0-9]+' "$log" | tail -n 1 | tr -s '\t ' ' ')"
        rm -f "$log"
        # client_session's fixture, one per process (libFuzzer exits
        # without running destructors).
        rm -rf "${TMPDIR:-/tmp}"/tw-fuzz-client-*
    else
        tail -n 60 "$log"
        echo "fuzz $target FAILED (full log: $log; the input is in fuzz/artifacts/$target)" >&2
        exit 1
    fi
done

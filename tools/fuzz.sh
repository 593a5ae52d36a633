#!/usr/bin/env bash
# Runs every fuzz target (fuzz/fuzz_targets/) for SECONDS each (default 30), starting from the
# committed seeds in fuzz/corpus/ (never written: new inputs go to target/fuzz-corpus/). Uses
# cargo-fuzz on the stable toolchain (RUSTC_BOOTSTRAP=1, no sanitizer), installing it when
# missing. A crash fails the script and leaves its input in fuzz/artifacts/.
#
#   tools/fuzz.sh            # 30 s per target, as CI runs it
#   tools/fuzz.sh 3600       # an hour per target
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
seconds=${1:-30}
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz@0.13.2
cd "$root/fuzz"
export RUSTC_BOOTSTRAP=1
targets=$(cargo fuzz list)
for target in $targets; do
    work="$root/target/fuzz-corpus/$target"
    mkdir -p "$work"
    echo "tools/fuzz.sh: $target for ${seconds} s" >&2
    log="$work.log"
    if ! cargo fuzz run --sanitizer none "$target" "$work" "corpus/$target" -- \
        -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        echo "tools/fuzz.sh: $target failed; the input is in fuzz/artifacts/$target/" >&2
        exit 1
    fi
    grep -E "^(stat::number_of_executed_units|Done)" "$log" || true
done

#!/usr/bin/env bash
# Allocations/s into the file store, with dnsctl.
#
#   tests/bench/alloc.sh [HOSTS]
#
# 1. one `dnsctl allocate --from-file` of HOSTS new hosts (default 100000): one locked
#    transaction, as the server does when many ServiceEntries appear at once;
# 2. 100 single-host `dnsctl allocate` runs into that full store: each one reads, locks and
#    rewrites the whole file, as an operator's pins do.
# Prints times, rates and the state file size. Writes only under a temporary directory.
set -euo pipefail

hosts=${1:-100000}
root=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

cargo build --release --quiet --manifest-path "$root/Cargo.toml" --bin dnsctl
dnsctl="$root/target/release/dnsctl"
state="$work/state.json"

python3 -c "import sys; print('\n'.join(f'svc{i}.ns{i % 100}.global' for i in range(int(sys.argv[1]))))" "$hosts" > "$work/hosts.txt"

now() { date +%s.%N; }
t0=$(now)
"$dnsctl" --state "$state" allocate --from-file "$work/hosts.txt" > /dev/null
t1=$(now)
for i in $(seq 100); do "$dnsctl" --state "$state" allocate "extra$i.global" > /dev/null; done
t2=$(now)
"$dnsctl" --state "$state" check

python3 - "$hosts" "$t0" "$t1" "$t2" "$(stat -c %s "$state")" <<'PY'
import sys
hosts, t0, t1, t2, size = int(sys.argv[1]), *map(float, sys.argv[2:5]), int(sys.argv[5])
batch, single = t1 - t0, (t2 - t1) / 100
print(f"\nfile store, {hosts} hosts")
print(f"{'batch allocate (one transaction)':<40} {batch:8.2f} s  {hosts / batch:10.0f} allocations/s")
print(f"{'single allocate into the full store':<40} {single * 1000:8.1f} ms {1 / single:10.1f} allocations/s")
print(f"{'state file size':<40} {size / 1e6:8.2f} MB  ({size / hosts:.0f} bytes/host)")
PY

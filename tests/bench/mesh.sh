#!/usr/bin/env bash
# A many-source mesh: start-up, memory, one change at a time, and steady churn under load.
#
#   tests/bench/mesh.sh [HOSTS] [SECONDS]     (defaults: 100000 hosts, 60 s of churn)
#
# The workload (tests/bench/gen_mesh.py): 100 sources, here directories of ServiceEntry files
# under one zones directory, each declaring HOSTS/10 entries; every host is declared by 10
# sources, a third of them without addresses. HOSTS=100000 is a million declarations. Prints:
# - ready: exec until the last explicit and the last address-less host answer; resident
#   memory then, 2 s later, and at peak;
# - one change at a time (CHANGES, default 200: add, change an address, delete, add an
#   address-less entry): from the file landing until DNS shows it, p50/p95/p99/max;
# - churn: RATE changes/s (default 50) for SECONDS while dnsperf asks at a fixed QPS (default
#   50000): the same latencies, and dnsperf's latency percentiles and lost queries.
# UPDATE_PRIORITY (default idle) is the server's --update-priority; GLOBALDNS a binary to run.
# Needs: dnsperf, python3. Binds loopback only.
source "$(dirname "$0")/lib.sh"
require dnsperf python3 taskset
hosts=${1:-100000}
changes=${CHANGES:-200} rate=${RATE:-50} qps=${QPS:-50000}
# As a server in a pod of its own runs: updates never delay a waking query thread.
priority=${UPDATE_PRIORITY:-idle}

# GLOBALDNS names a binary to measure instead of this tree's (to compare two builds).
bin=${GLOBALDNS:-$root/target/release/globaldns}
if [ -z "${GLOBALDNS:-}" ]; then
    echo "building globaldns (release)..." >&2
    cargo build --release --quiet --manifest-path "$root/Cargo.toml" --bin globaldns
fi
python3 "$root/tests/bench/gen_mesh.py" "$hosts" 100 10 "$work"
# The generated files (a quarter of a GB at 100,000 hosts) reach the disk before the server
# starts: their writeback would otherwise still be going on when the changes are timed, and
# hold up the state file's fsyncs.
sync
python3 - "$hosts" >"$work/queries.txt" <<'PY'
import random, sys
hosts, rng = int(sys.argv[1]), random.Random(42)
for i in range(100_000):
    h = rng.randrange(hosts)
    print(f"svc{h}.ns{h % 100}.global A" if i % 10 else f"missing{i}.ns{i % 100}.global A")
PY
driver() { taskset -c "$client_cpu" python3 "$root/tests/bench/mesh_changes.py" "$@"; }
mib() { awk -v k="$1" '$1 == k":" { printf "%.0f", $2 / 1024 }' "/proc/$2/status"; }

port=$(free_port)
last_explicit=$(((hosts - 1) / 3 * 3 - 1)) last_vip=$(((hosts - 1) / 3 * 3))
"$bin" --listen "127.0.0.1:$port" --zones "$work/zones" \
    --state "$work/state.json" --resolv-conf /dev/null --rescan-interval 3600 \
    --update-priority "$priority" \
    >/dev/null 2>"$work/globaldns.log" &
pid=$!
pids+=($pid)
ready=$(driver ready "$port" "svc$last_explicit.ns$((last_explicit % 100)).global" \
    "svc$last_vip.ns$((last_vip % 100)).global" | awk '{print $2}')
kill -0 "$pid" || { cat "$work/globaldns.log" >&2; exit 1; }
rss=$(mib VmRSS "$pid")
sleep 2
settled=$(mib VmRSS "$pid")
# Start-up parses on both cores; from here on the server keeps to one (every thread, and those
# it starts later), the client (dnsperf and the change driver) to the other, as in the other
# benchmarks: a query then waits on nothing of the client's. SHARED_CPUS=1 leaves both shared.
if [ "${SHARED_CPUS:-0}" != 1 ]; then
    taskset -a -p -c "$server_cpu" "$pid" >/dev/null
fi

driver changes "$port" "$work/zones" "$changes" >"$work/changes.txt"

# Every query's latency (-v) is written down, and put into 0.1 ms buckets for the percentiles
# once the run is over: read meanwhile, it took CPU from the server being measured.
taskset -c "$client_cpu" dnsperf -s 127.0.0.1 -p "$port" -d "$work/queries.txt" -l "$((seconds + 5))" \
    -c 8 -q 500 -Q "$qps" -t 2 -v >"$work/dnsperf.raw" 2>&1 &
perf_pid=$!
sleep 2
driver churn "$port" "$work/zones" "$rate" "$seconds" >"$work/churn.txt" 2>"$work/unseen.txt"
wait "$perf_pid"
awk '
    /^> / { b = int($NF * 10000); n[b]++; total++; next }
    { print }
    END { for (b = 0; seen < 0.99 * total; b++) seen += n[b]; printf "p99_ms %.1f\n", b / 10 }' \
    "$work/dnsperf.raw" >"$work/dnsperf.txt"
rm -f "$work/dnsperf.raw"
peak=$(mib VmHWM "$pid")
steady=$(mib VmRSS "$pid")

figure() { awk -v k="$1" '$1 == k { print $2 }' "$2"; }
row() { printf '%-52s %12s\n' "$1" "$2"; }
printf '\n%s hosts, %s declarations from 100 directories of ServiceEntry files, --update-priority %s\n' \
    "$hosts" "$((hosts * 10))" "$priority"
row "ready (exec until every name answers)" "$ready s"
row "resident memory when ready / 2 s later" "$rss / $settled MiB"
row "resident memory after churn / peak" "$steady / $peak MiB"
for p in p50 p95 p99 max; do
    row "one change at a time ($changes): visible after, $p" "$(figure "change_$p" "$work/changes.txt") ms"
done
row "  changes never seen" "$(figure change_unseen "$work/changes.txt")"
for p in p50 p99 max; do
    row "churn $rate/s for ${seconds}s: visible after, $p" "$(figure "churn_$p" "$work/churn.txt") ms"
done
row "  changes never seen" "$(figure churn_unseen "$work/churn.txt")"
awk -v qps="$qps" '
    /Queries per second:/ { printf "%-52s %12.0f\n", "queries/s meanwhile (asked: " qps ")", $4 }
    /Queries lost:/ { printf "%-52s %12s\n", "queries lost meanwhile", $3 }
    /^p99_ms/ { printf "%-52s %9.1f ms\n", "p99 query latency meanwhile", $2 }
    /Average Latency/ { gsub(/[(),]/, ""); printf "%-52s %9.2f ms\n", "max query latency meanwhile", $8 * 1000 }' \
    "$work/dnsperf.txt"

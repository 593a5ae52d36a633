#!/usr/bin/env bash
# User-space instructions per query, counted by valgrind's callgrind: deterministic where
# queries/s is not (one dnsperf core saturates first on a 2-core machine), so it is how a change
# to the query path is judged.
#
#   tests/bench/callgrind.sh [NAMES] [QUERIES]
#
# Two workloads, each QUERIES queries (default 20000) sent by dnsperf at a rate valgrind keeps up
# with: the .global mix of gen_zone.py (80 % A, 10 % AAAA, 10 % NXDOMAIN) answered from the name
# table, and forwarded names answered from the cache (a second globaldns, not measured, is the
# upstream; one pass fills the cache first). Instrumentation is on only while the measured
# queries run, so start-up and zone loading are not counted. Prints instructions per query, all
# threads together. GLOBALDNS=path measures another build (say, the commit before a change).
# Needs: valgrind, dnsperf, python3. Binds loopback only.
source "$(dirname "$0")/lib.sh"
require valgrind callgrind_control dnsperf python3
queries=${2:-20000}
rate=${RATE:-1500}

if [ -z "${GLOBALDNS:-}" ]; then
    echo "building globaldns (release)..." >&2
    cargo build --release --quiet --manifest-path "$root/Cargo.toml" --bin globaldns
fi
gd=${GLOBALDNS:-$root/target/release/globaldns}
python3 "$root/tests/bench/gen_zone.py" "$names" "$work"
head -n "$queries" "$work/queries.txt" > "$work/global.txt"
python3 -c "import sys; print('\n'.join(f'n{i % 1000}.bench.example A' for i in range(int(sys.argv[1]))))" \
    "$queries" > "$work/forwarded.txt"
mkdir -p "$work/upstream" "$work/empty"
printf 'apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: bench}\nspec: {hosts: ["*.bench.example"], addresses: [192.0.2.10]}\n' \
    > "$work/upstream/bench.yaml"

# Runs globaldns under callgrind with ARGS, sends FILE once to warm up (when WARM=1), counts
# FILE, and prints instructions per answered query.
count() { # file args...
    local file=$1 port out pid answered
    shift
    port=$(free_port)
    out="$work/callgrind.$port"
    valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out" \
        "$gd" --listen "127.0.0.1:$port" --workers 1 --resolv-conf /dev/null \
        --state "$work/state.$port.json" "$@" >/dev/null 2>"$work/valgrind.$port.log" &
    pid=$!
    pids+=("$pid")
    for _ in $(seq 300); do
        dnsperf -s 127.0.0.1 -p "$port" -d <(echo "global SOA") -n 1 -t 1 2>/dev/null \
            | grep -q 'Queries completed: *1 ' && break
        sleep 0.2
    done
    if [ "${WARM:-0}" = 1 ]; then
        dnsperf -s 127.0.0.1 -p "$port" -d "$file" -n 1 -Q "$rate" -t 5 >/dev/null 2>&1
    fi
    callgrind_control -i on "$pid" >/dev/null 2>&1
    answered=$(dnsperf -s 127.0.0.1 -p "$port" -d "$file" -n 1 -Q "$rate" -t 5 2>/dev/null \
        | awk '/Queries completed:/ {print $3}')
    callgrind_control -i off "$pid" >/dev/null 2>&1
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    local total
    total=$(grep -h '^totals:' "$out"* | awk '{s += $2} END {print s}')
    python3 -c "import sys; t, a = int(sys.argv[1]), int(sys.argv[2]); print(f'{t / a:,.0f} instructions/query over {a:,} queries')" \
        "$total" "$answered"
}

up_port=$(free_port)
"$gd" --listen "127.0.0.1:$up_port" --zones "$work/upstream" --zone example --ttl 3600 \
    --state "$work/upstream.state.json" --resolv-conf /dev/null --workers 1 >/dev/null 2>&1 &
pids+=($!)
wait_ready "$up_port" "warm.bench.example A"

echo ".global mix:          $(count "$work/global.txt" --zones "$work/zones")"
echo "forwarded cache hits: $(WARM=1 count "$work/forwarded.txt" --zones "$work/empty" --upstream "127.0.0.1:$up_port")"

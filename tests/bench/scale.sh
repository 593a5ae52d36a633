#!/usr/bin/env bash
# Start-up time, memory and table rebuild at scale.
#
#   tests/bench/scale.sh [NAMES]
#
# Generates NAMES hosts (default 100000) as ServiceEntry files, starts globaldns (release) on
# them and reports: time from exec until the last name answers, resident memory (then, 2 s
# later, and peak),
# then the time from adding one ServiceEntry file until its name answers, with dnsperf running
# throughout to show that queries are answered while the table is rebuilt (its max latency).
# Needs: dnsperf, kdig, python3. Binds loopback only.
source "$(dirname "$0")/lib.sh"
require dnsperf kdig python3

echo "building globaldns (release)..." >&2
cargo build --release --quiet --manifest-path "$root/Cargo.toml" --bin globaldns
python3 "$root/tests/bench/gen_zone.py" "$names" "$work"
last="svc$((names - 1)).ns$(((names - 1) % 100)).global"
now() { date +%s.%N; }
answers() { # port name
    kdig @127.0.0.1 -p "$1" +short +time=1 +retry=0 "$2" A 2>/dev/null | grep -q .
}
elapsed() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$1" "$2"; }
mib() { awk -v k="$1" '$1 == k":" { printf "%.0f", $2 / 1024 }' "/proc/$2/status"; }

port=$(free_port)
t0=$(now)
"$root/target/release/globaldns" --listen "127.0.0.1:$port" --zones "$work/zones" \
    --state "$work/state.json" --resolv-conf /dev/null --rescan-interval 3600 \
    >/dev/null 2>"$work/globaldns.log" &
pid=$!
pids+=($pid)
until answers "$port" "$last"; do
    kill -0 "$pid" 2>/dev/null || { cat "$work/globaldns.log" >&2; exit 1; }
    sleep 0.02
done
t1=$(now)
rss=$(mib VmRSS "$pid")
sleep 2
settled=$(mib VmRSS "$pid") peak=$(mib VmHWM "$pid")

# One more ServiceEntry while dnsperf keeps asking.
taskset -c "$client_cpu" dnsperf -s 127.0.0.1 -p "$port" -d "$work/queries.txt" -l 6 -c 8 -q 50 -t 2 \
    >"$work/dnsperf.txt" 2>&1 &
perf_pid=$!
sleep 2
printf 'apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: added, namespace: bench}\nspec: {hosts: [added.bench.global], addresses: [241.0.0.1]}\n' \
    >"$work/zones/added.yaml"
t2=$(now)
until answers "$port" added.bench.global; do sleep 0.01; done
t3=$(now)
wait "$perf_pid"

printf '\n%s names from ServiceEntry files (%s)\n' "$names" "$(du -h "$work/zones/entries.yaml" | cut -f1)"
printf '%-44s %10s\n' "ready (exec until the last name answers)" "$(elapsed "$t0" "$t1") s"
printf '%-44s %10s\n' "resident memory when ready" "$rss MiB"
printf '%-44s %10s\n' "resident memory 2 s later" "$settled MiB"
printf '%-44s %10s\n' "peak resident memory" "$peak MiB"
printf '%-44s %10s\n' "one ServiceEntry added: answered after" "$(elapsed "$t2" "$t3") s"
awk '/Queries per second:/ { printf "%-44s %10.0f\n", "queries/s meanwhile", $4 }
     /Queries lost:/ { printf "%-44s %10s\n", "queries lost meanwhile", $3 }
     /Average Latency/ { gsub(/[(),]/, ""); printf "%-44s %10.2f ms\n", "max latency meanwhile", $8 * 1000 }' "$work/dnsperf.txt"

#!/usr/bin/env bash
# Zone transfer of a big zone: how long an AXFR of NAMES hosts takes from globaldns and from NSD
# (the same names as a zone file), globaldns's resident memory before and at its peak during the
# transfer, and query latency at a fixed rate with and without transfers running meanwhile.
#
#   tests/bench/axfr.sh [NAMES] [SECONDS]       (default 100000 names)
#
# Server on CPU 1, dnsperf and kdig on CPU 0 (SERVER_CPU, CLIENT_CPU). Needs: nsd, dnsperf, kdig,
# python3 (apt-get install nsd dnsperf knot-dnsutils). Binds loopback only.
source "$(dirname "$0")/lib.sh"
names=${1:-100000}
rate=${RATE:-10000}
require nsd dnsperf kdig python3 taskset

echo "building globaldns (release)..." >&2
cargo build --release --quiet --manifest-path "$root/Cargo.toml" --bin globaldns
python3 "$root/tests/bench/gen_zone.py" "$names" "$work"
last=$(grep -o 'svc[0-9]*\.ns[0-9]*\.global' "$work/global.zone" | tail -n 1)

# One AXFR from port; prints "seconds records messages".
axfr() { # port
    local t0 t1 stats
    t0=$(date +%s.%N)
    stats=$(taskset -c "$client_cpu" kdig @127.0.0.1 -p "$1" +time=30 global AXFR | tail -n 3 | grep '^;; Received')
    t1=$(date +%s.%N)
    python3 -c "import re, sys; m = re.search(r'\((\d+) messages?, (\d+) records\)', sys.argv[3]); print(f'{float(sys.argv[2]) - float(sys.argv[1]):.3f} {m.group(2)} {m.group(1)}')" "$t0" "$t1" "$stats"
}

rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }

# NSD, the reference.
nsd_port=$(free_port)
mkdir -p "$work/nsd"
cat > "$work/nsd/nsd.conf" <<CONF
server:
    ip-address: 127.0.0.1@$nsd_port
    server-count: 1
    username: ""
    zonesdir: "$work"
    database: ""
    pidfile: "$work/nsd/nsd.pid"
    xfrdfile: "$work/nsd/xfrd.state"
    zonelistfile: "$work/nsd/zone.list"
    logfile: "$work/nsd/nsd.log"
    rrl-ratelimit: 0
remote-control:
    control-enable: no
zone:
    name: global
    zonefile: global.zone
    provide-xfr: 127.0.0.1 NOKEY
CONF
taskset -c "$server_cpu" nsd -d -c "$work/nsd/nsd.conf" &
pids+=($!)
wait_ready "$nsd_port" "global SOA"
must_answer "$nsd_port" "$last"
read -r nsd_s nsd_records nsd_messages < <(axfr "$nsd_port")
kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true

# globaldns
gd_port=$(free_port)
taskset -c "$server_cpu" "$root/target/release/globaldns" --listen "127.0.0.1:$gd_port" \
    --zones "$work/zones" --workers 1 --resolv-conf /dev/null >/dev/null 2>"$work/globaldns.log" &
gd=$!
pids+=($gd)
wait_ready "$gd_port" "global SOA"
must_answer "$gd_port" "$last"
sleep 2 # the freed memory of the first build handed back (malloc_trim)
rss_before=$(rss_kib "$gd")
peak=$rss_before
( while kill -0 "$gd" 2>/dev/null; do rss_kib "$gd"; sleep 0.005; done ) >"$work/rss.txt" 2>/dev/null &
sampler=$!
read -r gd_s gd_records gd_messages < <(axfr "$gd_port")
kill "$sampler" 2>/dev/null || true
peak=$(sort -n "$work/rss.txt" | tail -n 1)

quiet=$(latency_at "$gd_port" "$rate" "$work/queries.txt")
# Transfers back to back while the same load runs.
( while true; do taskset -c "$client_cpu" kdig @127.0.0.1 -p "$gd_port" +time=30 global AXFR >/dev/null; done ) &
looping=$!
busy=$(latency_at "$gd_port" "$rate" "$work/queries.txt")
kill "$looping" 2>/dev/null || true
lost=$(grep -c 'timed out' "$work/latency.txt" || true)

printf '\nAXFR of global., %s hosts (A and AAAA each), server on CPU %s, kdig on CPU %s\n' "$names" "$server_cpu" "$client_cpu"
printf '%-10s %10s %10s %10s\n' server seconds records messages
printf '%-10s %10s %10s %10s\n' nsd "$nsd_s" "$nsd_records" "$nsd_messages"
printf '%-10s %10s %10s %10s\n' globaldns "$gd_s" "$gd_records" "$gd_messages"
printf 'globaldns resident memory: %s MiB before, %s MiB at the peak of the transfer\n' \
    "$((rss_before / 1024))" "$((peak / 1024))"
printf 'latency at %s queries/s (p50, p99, max in ms): %s without transfers, %s with AXFRs back to back (%s queries lost)\n' \
    "$rate" "$quiet" "$busy" "$lost"

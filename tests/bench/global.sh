#!/usr/bin/env bash
# Queries/s of the .global path: globaldns against NSD on the same names, same core, same run.
#
#   tests/bench/global.sh [NAMES] [SECONDS]
#
# Builds globaldns in release mode, generates NAMES hosts (default 10000), starts each server
# pinned to CPU 1 with taskset, drives it with dnsperf pinned to CPU 0, and prints a table. The
# last row is the floor: examples/udp_floor.rs answers with the query itself through the same
# socket calls, so its CPU per query is the network stack's, below which no server can go.
# Needs: nsd, dnsperf, python3 (apt-get install nsd dnsperf). Binds loopback only.
source "$(dirname "$0")/lib.sh"
require nsd dnsperf python3 taskset

echo "building globaldns (release)..." >&2
cargo build --release --quiet --manifest-path "$root/Cargo.toml" --bin globaldns --example udp_floor
python3 "$root/tests/bench/gen_zone.py" "$names" "$work"
# Latency is also measured at this fixed rate: half of what one dnsperf core drives.
half=${HALF_QPS:-80000}
last="svc$((names - 1)).ns$(((names - 1) % 100)).global"

# NSD
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
    hide-version: yes
    # Debian builds NSD with response rate limiting, which drops a benchmark's answers.
    rrl-ratelimit: 0
    rrl-whitelist-ratelimit: 0
remote-control:
    control-enable: no
zone:
    name: global
    zonefile: global.zone
CONF
taskset -c "$server_cpu" nsd -d -c "$work/nsd/nsd.conf" &
pids+=($!)
wait_ready "$nsd_port" "global SOA"
must_answer "$nsd_port" "$last"
read -r nsd_qps nsd_lat nsd_lost nsd_us nsd_user < <(measure "$nsd_port" "${pids[-1]}" "$work/queries.txt")
nsd_pct=$(latency_at "$nsd_port" "$half" "$work/queries.txt")
kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true

# globaldns
gd_port=$(free_port)
taskset -c "$server_cpu" "$root/target/release/globaldns" --listen "127.0.0.1:$gd_port" \
    --zones "$work/zones" --workers 1 --resolv-conf /dev/null >/dev/null 2>"$work/globaldns.log" &
pids+=($!)
wait_ready "$gd_port" "global SOA"
must_answer "$gd_port" "$last"
read -r gd_qps gd_lat gd_lost gd_us gd_user < <(measure "$gd_port" "${pids[-1]}" "$work/queries.txt")
gd_pct=$(latency_at "$gd_port" "$half" "$work/queries.txt")
kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true

# The floor: the same socket calls, no work.
fl_port=$(free_port)
taskset -c "$server_cpu" "$root/target/release/examples/udp_floor" "127.0.0.1:$fl_port" >/dev/null &
pids+=($!)
wait_ready "$fl_port" "global SOA"
read -r fl_qps fl_lat fl_lost fl_us fl_user < <(measure "$fl_port" "${pids[-1]}" "$work/queries.txt")

printf '\n.global path, %s names, 80%% A / 10%% AAAA / 10%% NXDOMAIN, %ss per server, server on CPU %s, dnsperf on CPU %s\n' \
    "$names" "$seconds" "$server_cpu" "$client_cpu"
print_header
print_row nsd "$nsd_qps" "$nsd_lat" "$nsd_lost" "$nsd_us" "$nsd_user"
print_row globaldns "$gd_qps" "$gd_lat" "$gd_lost" "$gd_us" "$gd_user"
print_row "floor" "$fl_qps" "$fl_lat" "$fl_lost" "$fl_us" "$fl_user"
python3 -c "import sys; print(f'ratio globaldns/nsd: {float(sys.argv[1]) / float(sys.argv[2]):.2f} measured, {float(sys.argv[3]) / float(sys.argv[4]):.2f} by CPU per query')" "$gd_qps" "$nsd_qps" "$nsd_us" "$gd_us"
python3 -c "import sys; print(f'best any server could do here, by CPU per query: {float(sys.argv[1]) / float(sys.argv[2]):.2f}x nsd')" "$nsd_us" "$fl_us"
printf '\nlatency at %s queries/s (p50, p99, max in ms): nsd %s, globaldns %s\n' "$half" "$nsd_pct" "$gd_pct"

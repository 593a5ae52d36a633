#!/usr/bin/env bash
# Queries/s of the .global path: globaldns against NSD on the same names, same core, same run.
#
#   tests/bench/global.sh [NAMES] [SECONDS]
#
# Builds globaldns in release mode, generates NAMES hosts (default 10000), starts each server
# pinned to CPU 1 with taskset, drives it with dnsperf pinned to CPU 0, and prints a table.
# Needs: nsd, dnsperf, python3 (apt-get install nsd dnsperf). Binds loopback only.
set -euo pipefail

names=${1:-10000}
seconds=${2:-10}
server_cpu=${SERVER_CPU:-1}
client_cpu=${CLIENT_CPU:-0}
root=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

for tool in nsd dnsperf python3 taskset; do
    command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install nsd dnsperf)" >&2; exit 1; }
done

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_ready() { # port
    for _ in $(seq 100); do
        if dnsperf -s 127.0.0.1 -p "$1" -d <(echo "global SOA") -n 1 -t 1 2>/dev/null | grep -q 'Queries completed: *1 '; then return 0; fi
        sleep 0.1
    done
    echo "server on port $1 did not come up" >&2
    return 1
}

# dnsperf summary -> "qps avg_latency_ms lost"
measure() { # port
    local out
    out=$(taskset -c "$client_cpu" dnsperf -s 127.0.0.1 -p "$1" -d "$work/queries.txt" -l "$seconds" -c 8 -q 200 -t 2 2>&1)
    local qps lat lost
    qps=$(awk '/Queries per second:/ {print $4}' <<<"$out")
    lat=$(awk '/Average Latency/ {print $4 * 1000}' <<<"$out")
    lost=$(awk '/Queries lost:/ {print $3}' <<<"$out")
    echo "${qps:-0} ${lat:-?} ${lost:-?}"
}

echo "building globaldns (release)..." >&2
cargo build --release --quiet --manifest-path "$root/Cargo.toml" --bin globaldns
python3 "$root/tests/bench/gen_zone.py" "$names" "$work"

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
wait_ready "$nsd_port"
read -r nsd_qps nsd_lat nsd_lost < <(measure "$nsd_port")
kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true

# globaldns
gd_port=$(free_port)
taskset -c "$server_cpu" "$root/target/release/globaldns" --listen "127.0.0.1:$gd_port" \
    --zones "$work/zones" --workers 1 --resolv-conf /dev/null >/dev/null 2>"$work/globaldns.log" &
pids+=($!)
wait_ready "$gd_port"
read -r gd_qps gd_lat gd_lost < <(measure "$gd_port")

printf '\n.global path, %s names, 80%% A / 10%% AAAA / 10%% NXDOMAIN, %ss per server, server on CPU %s, dnsperf on CPU %s\n' \
    "$names" "$seconds" "$server_cpu" "$client_cpu"
printf '%-12s %12s %14s %8s\n' server "queries/s" "avg latency ms" lost
printf '%-12s %12.0f %14s %8s\n' nsd "$nsd_qps" "$nsd_lat" "$nsd_lost"
printf '%-12s %12.0f %14s %8s\n' globaldns "$gd_qps" "$gd_lat" "$gd_lost"
python3 -c "import sys; print(f'ratio globaldns/nsd: {float(sys.argv[1]) / float(sys.argv[2]):.2f}')" "$gd_qps" "$nsd_qps"

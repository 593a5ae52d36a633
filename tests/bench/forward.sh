#!/usr/bin/env bash
# Cache-hit queries/s of the forwarder: globaldns against Debian's unbound as a caching
# forwarder, both in front of the same upstream, same core, same run.
#
#   tests/bench/forward.sh [NAMES] [SECONDS]
#
# The upstream is a globaldns process authoritative for bench.example (a wildcard, so every
# name resolves). Both caches are warmed with the NAMES (default 10000) once, then dnsperf
# (pinned to CPU 0) asks them again, with each server pinned to CPU 1.
# Needs: unbound, dnsperf, python3 (apt-get install unbound dnsperf). Binds loopback only.
source "$(dirname "$0")/lib.sh"
require unbound dnsperf python3 taskset

warm_and_measure() { # port pid
    taskset -c "$client_cpu" dnsperf -s 127.0.0.1 -p "$1" -d "$work/queries.txt" -n 1 -q 200 -t 2 >/dev/null 2>&1
    measure "$1" "$2" "$work/queries.txt"
}

cargo build --release --quiet --manifest-path "$root/Cargo.toml" --bin globaldns
gd="$root/target/release/globaldns"
python3 -c "import sys; print('\n'.join(f'n{i}.bench.example A' for i in range(int(sys.argv[1]))))" "$names" > "$work/queries.txt"

# The shared upstream, on its own core.
mkdir -p "$work/upstream"
printf 'apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: bench}\nspec: {hosts: ["*.bench.example"], addresses: [192.0.2.10]}\n' > "$work/upstream/bench.yaml"
up_port=$(free_port)
taskset -c "$client_cpu" "$gd" --listen "127.0.0.1:$up_port" --zones "$work/upstream" --zone example --ttl 3600 \
    --state "$work/upstream.state.json" --resolv-conf /dev/null --workers 1 >/dev/null 2>&1 &
pids+=($!)
wait_ready "$up_port" "warm.bench.example A"

# unbound as a caching forwarder
ub_port=$(free_port)
cat > "$work/unbound.conf" <<CONF
server:
    interface: 127.0.0.1@$ub_port
    port: $ub_port
    do-daemonize: no
    username: ""
    chroot: ""
    directory: "$work"
    pidfile: "$work/unbound.pid"
    use-syslog: no
    num-threads: 1
    module-config: "iterator"
    do-not-query-localhost: no
    access-control: 127.0.0.0/8 allow
    msg-cache-size: 64m
    rrset-cache-size: 128m
    verbosity: 0
remote-control:
    control-enable: no
forward-zone:
    name: "."
    forward-addr: 127.0.0.1@$up_port
CONF
taskset -c "$server_cpu" unbound -d -c "$work/unbound.conf" >/dev/null 2>&1 &
pids+=($!)
wait_ready "$ub_port" "warm.bench.example A"
read -r ub_qps ub_lat ub_lost ub_us ub_user < <(warm_and_measure "$ub_port" "${pids[-1]}")
kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true

# globaldns as a caching forwarder
gd_port=$(free_port)
taskset -c "$server_cpu" "$gd" --listen "127.0.0.1:$gd_port" --zones "$work/none" --upstream "127.0.0.1:$up_port" \
    --state "$work/front.state.json" --workers 1 >/dev/null 2>"$work/front.log" &
pids+=($!)
wait_ready "$gd_port" "warm.bench.example A"
read -r gd_qps gd_lat gd_lost gd_us gd_user < <(warm_and_measure "$gd_port" "${pids[-1]}")

printf '\nforwarded cache hits, %s names, %ss per server, server on CPU %s, dnsperf on CPU %s\n' "$names" "$seconds" "$server_cpu" "$client_cpu"
print_header
print_row unbound "$ub_qps" "$ub_lat" "$ub_lost" "$ub_us" "$ub_user"
print_row globaldns "$gd_qps" "$gd_lat" "$gd_lost" "$gd_us" "$gd_user"
python3 -c "import sys; print(f'ratio globaldns/unbound: {float(sys.argv[1]) / float(sys.argv[2]):.2f} measured, {float(sys.argv[3]) / float(sys.argv[4]):.2f} by CPU per query')" "$gd_qps" "$ub_qps" "$ub_us" "$gd_us"

# Shared by the benchmark scripts: sourced first, it reads their arguments ([NAMES] [SECONDS]),
# makes a work directory, and stops every process in $pids on exit.
set -euo pipefail

names=${1:-10000}
seconds=${2:-10}
server_cpu=${SERVER_CPU:-1}
client_cpu=${CLIENT_CPU:-0}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

require() { # tool...
    local tool
    for tool in "$@"; do
        command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install $*)" >&2; exit 1; }
    done
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_ready() { # port query
    for _ in $(seq 100); do
        if dnsperf -s 127.0.0.1 -p "$1" -d <(echo "$2") -n 1 -t 1 2>/dev/null | grep -q 'Queries completed: *1 '; then return 0; fi
        sleep 0.1
    done
    echo "server on port $1 did not come up" >&2
    return 1
}

# Fails unless the server on port answers name with an address: a benchmark of NXDOMAINs (a
# zone that failed to load) must not pass for one of answers.
must_answer() { # port name
    dnsperf -s 127.0.0.1 -p "$1" -d <(echo "$2 A") -n 1 -t 1 -v 2>/dev/null | grep -q 'NOERROR' || {
        echo "server on port $1 does not answer $2" >&2
        exit 1
    }
}

# A process and all its descendants (NSD serves from a grandchild).
family() { # pid
    echo "$1"
    local child
    for child in $(pgrep -P "$1" 2>/dev/null); do family "$child"; done
}

# CPU time (clock ticks) used so far by a process and its descendants: "user system".
cpu_ticks() { # pid
    local user=0 system=0 pid u s
    for pid in $(family "$1"); do
        # Fields after "pid (comm) ": comm may hold spaces ("nsd: server 1").
        read -r u s < <(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | awk '{print $12, $13}' || echo 0 0)
        user=$((user + ${u:-0})) system=$((system + ${s:-0}))
    done
    echo "$user $system"
}

# One dnsperf run against port; prints "qps avg_latency_ms lost cpu_us user_us" (the server's
# CPU per query, all and in user space). CPU per query tells a server's capacity even when
# dnsperf's own core is the limit; the rest of it is the kernel's (loopback delivery, wakeups).
measure() { # port server_pid query_file
    local u0 s0 u1 s1 out
    read -r u0 s0 < <(cpu_ticks "$2")
    out=$(taskset -c "$client_cpu" dnsperf -s 127.0.0.1 -p "$1" -d "$3" -l "$seconds" -c 8 -q 200 -t 2 2>&1)
    read -r u1 s1 < <(cpu_ticks "$2")
    awk -v user=$((u1 - u0)) -v sys=$((s1 - s0)) -v hz="$(getconf CLK_TCK)" '
        /Queries completed:/ { done = $3 }
        /Queries per second:/ { qps = $4 }
        /Average Latency/ { lat = $4 * 1000 }
        /Queries lost:/ { lost = $3 }
        END {
            us = done ? 1e6 / hz / done : 0
            printf "%s %s %s %.2f %.2f\n", qps, lat, lost, (user + sys) * us, user * us
        }' <<<"$out"
}

# Latency percentiles at a fixed rate; prints "p50_ms p99_ms max_ms".
latency_at() { # port qps query_file
    # Written to a file first: sorting while dnsperf runs would take CPU from the server.
    taskset -c "$client_cpu" dnsperf -s 127.0.0.1 -p "$1" -d "$3" -l 5 -c 8 -q 200 -t 2 -Q "$2" -v \
        >"$work/latency.txt" 2>/dev/null
    awk '/^> / { print $NF * 1000 }' "$work/latency.txt" | sort -n |
        awk '{ v[NR] = $1 } END { if (NR) printf "%.3f %.3f %.3f\n", v[int(NR * 0.5)], v[int(NR * 0.99)], v[NR]; else print "0 0 0" }'
}

print_header() {
    printf '%-12s %12s %14s %8s %14s %12s %16s\n' server "queries/s" "avg latency ms" lost "CPU us/query" "of it user" "1-core capacity"
}

print_row() { # name qps lat lost us user_us
    printf '%-12s %12.0f %14s %8s %14s %12s %16.0f\n' "$1" "$2" "$3" "$4" "$5" "$6" "$(python3 -c "print(1e6 / $5 if $5 > 0 else 0)")"
}

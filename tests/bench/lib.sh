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

# A process and all its descendants (NSD serves from a grandchild).
family() { # pid
    echo "$1"
    local child
    for child in $(pgrep -P "$1" 2>/dev/null); do family "$child"; done
}

# CPU time (clock ticks) used so far by a process and its descendants.
cpu_ticks() { # pid
    local total=0 pid
    for pid in $(family "$1"); do
        # Fields after "pid (comm) ": comm may hold spaces ("nsd: server 1").
        total=$((total + $(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | awk '{print $12 + $13}' || echo 0)))
    done
    echo "$total"
}

# One dnsperf run against port; prints "qps avg_latency_ms lost server_cpu_us_per_query".
# The server's CPU per query tells its capacity even when dnsperf's own core is the limit.
measure() { # port server_pid query_file
    local before after out
    before=$(cpu_ticks "$2")
    out=$(taskset -c "$client_cpu" dnsperf -s 127.0.0.1 -p "$1" -d "$3" -l "$seconds" -c 8 -q 200 -t 2 2>&1)
    after=$(cpu_ticks "$2")
    awk -v ticks=$((after - before)) -v hz="$(getconf CLK_TCK)" '
        /Queries completed:/ { done = $3 }
        /Queries per second:/ { qps = $4 }
        /Average Latency/ { lat = $4 * 1000 }
        /Queries lost:/ { lost = $3 }
        END { printf "%s %s %s %.2f\n", qps, lat, lost, (done ? ticks / hz / done * 1e6 : 0) }' <<<"$out"
}

print_header() {
    printf '%-12s %12s %14s %8s %14s %16s\n' server "queries/s" "avg latency ms" lost "CPU us/query" "1-core capacity"
}

print_row() { # name qps lat lost us
    printf '%-12s %12.0f %14s %8s %14s %16.0f\n' "$1" "$2" "$3" "$4" "$5" "$(python3 -c "print(1e6 / $5 if $5 > 0 else 0)")"
}

#!/usr/bin/env bash
# The many-source mesh on real API servers (the smaller run of the scale benchmark; mesh.sh runs
# the big one on files): CLUSTERS clusters (default 10) of etcd and kube-apiserver, each holding
# ENTRIES ServiceEntries (default 10,000) of the same hosts. See tests/kube_mesh.rs for what it
# prints. Builds the programs it runs (tools/build.sh) and the benchmark in release mode; binds
# loopback only; stops every process it starts.
#
#   CLUSTERS=10 ENTRIES=10000 CHANGES=50 tests/bench/kube_mesh.sh
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
"$root/tools/build.sh" >&2
cd "$root"
cargo test --release --test kube_mesh -- --ignored --nocapture --test-threads 1 2>&1 |
    grep -vE '^(running|test |$)|test result'

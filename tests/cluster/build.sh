#!/usr/bin/env bash
# Builds kube-apiserver, kube-controller-manager, etcd, kubectl and kstatus from the modules pinned in go.mod
# into $1 (default: <repo>/.bin/k8s-<version>). Skips binaries already built for this version.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
k8s_version=$(awk '$1=="k8s.io/kubernetes" && $2 ~ /^v/ {print $2; exit}' "$here/go.mod")
out=${1:-$(cd "$here/../.." && pwd)/.bin/k8s-$k8s_version}
mkdir -p "$out"
cd "$here"
pkg=k8s.io/component-base/version
ldflags="-s -w -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$(cut -d. -f2 <<<"$k8s_version")"
build() {  # name, package
  [ -x "$out/$1" ] && return 0
  local started=$SECONDS
  echo "dev-stack: building $1 $k8s_version from Go modules (first run only; later runs reuse $out) ..." >&2
  CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$out/$1.tmp" "$2"
  mv "$out/$1.tmp" "$out/$1"
  echo "dev-stack: built $1 in $((SECONDS - started))s" >&2
}
build etcd go.etcd.io/etcd/server/v3
build kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver
build kube-controller-manager k8s.io/kubernetes/cmd/kube-controller-manager
# The machine's kubectl may be missing or too old for this apiserver; build the matching one.
build kubectl k8s.io/kubernetes/cmd/kubectl
# Flux's health checks, for tests/e2e/test_gitops_health.py.
build kstatus ./kstatus
echo "$out"

#!/usr/bin/env bash
# Builds (or finds in the cache) the test control plane: kube-apiserver, kube-controller-manager,
# kubectl and an embedded etcd, from the pinned Kubernetes Go modules in this folder.
#
# The binaries are cached outside the checkout, keyed by the hash of go.mod, go.sum, the etcd
# main and this script, so the cold build (15-25 minutes on 2 cores) happens once per machine.
# Prints the directory holding the binaries on its last line of stdout.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
k8s_version="v1.37.2"

die() { echo "build.sh: error: $*" >&2; exit 1; }

command -v go >/dev/null 2>&1 || die "Go is not installed or not on PATH. The test control plane is built from Kubernetes' Go modules: install Go >= 1.26 (https://go.dev/doc/install, or 'apt-get install golang-go' if your distribution ships 1.26) and run again."
go_minor="$(go env GOVERSION | sed -E 's/^go1\.([0-9]+).*/\1/')"
[[ "$go_minor" =~ ^[0-9]+$ ]] && (( go_minor >= 26 )) || die "Go $(go env GOVERSION) is too old: Kubernetes $k8s_version needs Go >= 1.26."

cache_root="${DOWNSYNC_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/downsync}"
key="$(cat "$here/go.mod" "$here/go.sum" "$here/etcd/main.go" "$here/build.sh" | sha256sum | cut -c1-16)"
out="$cache_root/k8s-$k8s_version-$key"
bins=(etcd kube-apiserver kube-controller-manager kubectl)

have_all=1
for b in "${bins[@]}"; do [[ -x "$out/bin/$b" ]] || have_all=0; done
if (( have_all )); then
  echo "build.sh: using cached control plane binaries in $out/bin" >&2
  echo "$out/bin"
  exit 0
fi

mkdir -p "$out"
# One build at a time per cache entry: parallel test runs wait instead of building twice.
exec 9>"$out/.lock"
flock 9
have_all=1
for b in "${bins[@]}"; do [[ -x "$out/bin/$b" ]] || have_all=0; done
if (( have_all )); then echo "$out/bin"; exit 0; fi

export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=readonly
cd "$here"
echo "build.sh: downloading Go modules for Kubernetes $k8s_version ..." >&2
if ! go mod download 2>"$out/download.log"; then
  tail -n 20 "$out/download.log" >&2
  die "a Go module could not be fetched (log above, full log in $out/download.log). Check that the Go module proxy is reachable (go env GOPROXY = $(go env GOPROXY)) and that GOFLAGS/GOPRIVATE do not block k8s.io or go.etcd.io."
fi

ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$k8s_version -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=37 -X k8s.io/component-base/version.gitTreeState=clean"
tmp="$out/bin.tmp"
rm -rf "$tmp"; mkdir -p "$tmp"
start=$(date +%s)
echo "build.sh: building etcd, kube-apiserver, kube-controller-manager, kubectl (a cold build takes 15-25 minutes on 2 cores) ..." >&2
for pkg in ./etcd k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kubectl; do
  name="$(basename "$pkg")"
  t0=$(date +%s)
  if ! go build -trimpath -ldflags "$ldflags" -o "$tmp/$name" "$pkg" 2>"$out/build-$name.log"; then
    tail -n 30 "$out/build-$name.log" >&2
    die "building $name failed (log above, full log in $out/build-$name.log)"
  fi
  echo "build.sh:   $name built in $(( $(date +%s) - t0 ))s ($(du -h "$tmp/$name" | cut -f1))" >&2
done
rm -rf "$out/bin"
mv "$tmp" "$out/bin"
echo "build.sh: control plane built in $(( $(date +%s) - start ))s into $out/bin" >&2
echo "$out/bin"

#!/usr/bin/env bash
# Builds (or finds in the cache) kcp v0.26.0, the upstream control plane of the kcp tests, from
# the pinned Go modules in this folder (kcp's own module, its sdk module, and the kcp-dev fork of
# Kubernetes its go.mod replaces k8s.io/* with, all served by the Go module proxy).
#
# The binary is cached outside the checkout, keyed by the hash of go.mod, go.sum and this script,
# so the cold build (about 8-10 minutes on 2 cores) happens once per machine.
# Prints the directory holding the kcp binary on its last line of stdout.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
kcp_version="v0.26.0"
# What kcp's Makefile stamps: the Kubernetes version of its fork plus its own tag.
kube_version="v1.31.0"

die() { echo "kcp/build.sh: error: $*" >&2; exit 1; }

command -v go >/dev/null 2>&1 || die "Go is not installed or not on PATH. kcp is built from its Go modules: install Go >= 1.22 (https://go.dev/doc/install) and run again."
go_minor="$(go env GOVERSION | sed -E 's/^go1\.([0-9]+).*/\1/')"
[[ "$go_minor" =~ ^[0-9]+$ ]] && (( go_minor >= 22 )) || die "Go $(go env GOVERSION) is too old: kcp $kcp_version needs Go >= 1.22."

cache_root="${DOWNSYNC_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/downsync}"
key="$(cat "$here/go.mod" "$here/go.sum" "$here/build.sh" | sha256sum | cut -c1-16)"
out="$cache_root/kcp-$kcp_version-$key"

if [[ -x "$out/bin/kcp" ]]; then
  echo "kcp/build.sh: using cached kcp in $out/bin" >&2
  echo "$out/bin"
  exit 0
fi

mkdir -p "$out"
# One build at a time per cache entry: parallel test runs wait instead of building twice.
exec 9>"$out/.lock"
flock 9
if [[ -x "$out/bin/kcp" ]]; then echo "$out/bin"; exit 0; fi

export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-mod=readonly -buildvcs=false"
cd "$here"
echo "kcp/build.sh: downloading Go modules for kcp $kcp_version ..." >&2
if ! go mod download 2>"$out/download.log"; then
  tail -n 20 "$out/download.log" >&2
  die "a Go module could not be fetched (log above, full log in $out/download.log). Check that the Go module proxy is reachable (go env GOPROXY = $(go env GOPROXY)); kcp's modules (github.com/kcp-dev/...) come from the proxy, GitHub itself is not needed."
fi

v="k8s.io/component-base/version"
c="k8s.io/client-go/pkg/version"
full="$kube_version+kcp-$kcp_version"
ldflags="-s -w -X $v.gitVersion=$full -X $v.gitMajor=1 -X $v.gitMinor=31 -X $v.gitTreeState=clean -X $c.gitVersion=$full -X $c.gitMajor=1 -X $c.gitMinor=31 -X $c.gitTreeState=clean"
tmp="$out/bin.tmp"
rm -rf "$tmp"; mkdir -p "$tmp"
start=$(date +%s)
echo "kcp/build.sh: building kcp $kcp_version (a cold build takes about 8-10 minutes on 2 cores) ..." >&2
if ! go build -trimpath -ldflags "$ldflags" -o "$tmp/kcp" github.com/kcp-dev/kcp/cmd/kcp 2>"$out/build-kcp.log"; then
  tail -n 30 "$out/build-kcp.log" >&2
  die "building kcp failed (log above, full log in $out/build-kcp.log)"
fi
rm -rf "$out/bin"
mv "$tmp" "$out/bin"
echo "kcp/build.sh: kcp built in $(( $(date +%s) - start ))s ($(du -h "$out/bin/kcp" | cut -f1)) into $out/bin" >&2
echo "$out/bin"

#!/usr/bin/env bash
# Builds (or finds in the cache) the OCI registry tooling of the registry tests, from the pinned
# Go modules in this folder (tools of go.mod, every input in go.sum, all from the Go module proxy):
#
#   registry   the CNCF Distribution registry (github.com/distribution/distribution/v3, cmd/registry)
#   cosign     the Sigstore cosign CLI (github.com/sigstore/cosign/v2, cmd/cosign), to sign and
#              verify artifacts in that registry
#   htpasswd   htpasswd/ in this module: writes the bcrypt "user:hash" line of the registry's
#              htpasswd auth (bcrypt is the only hash the registry accepts)
#
# They are cached outside the checkout, keyed by the hash of go.mod, go.sum, htpasswd/main.go and
# this script, so the cold build (2.5-6 minutes on 2 cores, most of it cosign, after about a
# minute downloading 320 MB of modules) happens once per machine. Prints the directory holding the
# binaries on its last line of stdout.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
registry_version="v3.1.2"
cosign_version="v2.6.5"

die() { echo "registry/build.sh: error: $*" >&2; exit 1; }

command -v go >/dev/null 2>&1 || die "Go is not installed or not on PATH. The registry and cosign are built from their Go modules: install Go >= 1.26 (https://go.dev/doc/install, or 'apt-get install golang-go' if your distribution ships 1.26) and run again."
go_minor="$(go env GOVERSION | sed -E 's/^go1\.([0-9]+).*/\1/')"
[[ "$go_minor" =~ ^[0-9]+$ ]] && (( go_minor >= 26 )) || die "Go $(go env GOVERSION) is too old: distribution $registry_version needs Go >= 1.26."
grep -q "github.com/distribution/distribution/v3 $registry_version" "$here/go.mod" || die "go.mod does not pin github.com/distribution/distribution/v3 $registry_version: change both together."
grep -q "github.com/sigstore/cosign/v2 $cosign_version" "$here/go.mod" || die "go.mod does not pin github.com/sigstore/cosign/v2 $cosign_version: change both together."

cache_root="${DOWNSYNC_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/downsync}"
key="$(cat "$here/go.mod" "$here/go.sum" "$here/htpasswd/main.go" "$here/build.sh" | sha256sum | cut -c1-16)"
out="$cache_root/registry-$registry_version-cosign-$cosign_version-$key"
bins=(registry cosign htpasswd)

have_all() {
  local b; for b in "${bins[@]}"; do [[ -x "$out/bin/$b" ]] || return 1; done
}
if have_all; then
  echo "registry/build.sh: using cached registry, cosign and htpasswd in $out/bin" >&2
  echo "$out/bin"
  exit 0
fi

mkdir -p "$out"
# One build at a time per cache entry: parallel test runs wait instead of building twice.
exec 9>"$out/.lock"
flock 9
if have_all; then echo "$out/bin"; exit 0; fi

export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-mod=readonly -buildvcs=false"
cd "$here"
echo "registry/build.sh: downloading Go modules for distribution $registry_version and cosign $cosign_version ..." >&2
if ! go mod download 2>"$out/download.log"; then
  tail -n 20 "$out/download.log" >&2
  die "a Go module could not be fetched (log above, full log in $out/download.log). Check that the Go module proxy is reachable (go env GOPROXY = $(go env GOPROXY)); the modules come from the proxy, GitHub itself is not needed."
fi

# The version stamps their own release builds set (distribution's Makefile, cosign's Makefile).
declare -A ldflags=(
  [registry]="-s -w -X github.com/distribution/distribution/v3/version.version=$registry_version"
  [cosign]="-s -w -X sigs.k8s.io/release-utils/version.gitVersion=$cosign_version -X sigs.k8s.io/release-utils/version.gitTreeState=clean"
  [htpasswd]="-s -w"
)
declare -A pkgs=(
  [registry]=github.com/distribution/distribution/v3/cmd/registry
  [cosign]=github.com/sigstore/cosign/v2/cmd/cosign
  [htpasswd]=./htpasswd
)
tmp="$out/bin.tmp"
rm -rf "$tmp"; mkdir -p "$tmp"
start=$(date +%s)
echo "registry/build.sh: building registry, cosign, htpasswd (a cold build takes 2.5-6 minutes on 2 cores) ..." >&2
for name in htpasswd registry cosign; do
  t0=$(date +%s)
  if ! go build -trimpath -ldflags "${ldflags[$name]}" -o "$tmp/$name" "${pkgs[$name]}" 2>"$out/build-$name.log"; then
    tail -n 30 "$out/build-$name.log" >&2
    die "building $name failed (log above, full log in $out/build-$name.log)"
  fi
  echo "registry/build.sh:   $name built in $(( $(date +%s) - t0 ))s ($(du -h "$tmp/$name" | cut -f1))" >&2
done
"$tmp/registry" --version >/dev/null 2>&1 || die "the built registry does not run ($tmp/registry --version failed)"
"$tmp/cosign" version >/dev/null 2>&1 || die "the built cosign does not run ($tmp/cosign version failed)"
rm -rf "$out/bin"
mv "$tmp" "$out/bin"
echo "registry/build.sh: registry $registry_version, cosign $cosign_version and htpasswd built in $(( $(date +%s) - start ))s into $out/bin" >&2
echo "$out/bin"

#!/usr/bin/env bash
# Builds (or finds in the cache) the helm command the chart tests use (tests/tests/chart.rs),
# from the pinned helm.sh/helm/v4 Go module in this folder (a tool of go.mod, inputs in go.sum),
# and beside it `rulecheck` (rulecheck/, its own module: Prometheus' rule file parser, which the
# monitoring test runs on the alert rules), and takes the PrometheusRule and PodMonitor CRDs,
# which the chart's monitoring objects need on the test API server, from the pinned
# prometheus-operator Go module (its checksum below).
#
# All are cached outside the checkout, keyed by the hash of the go.mod and go.sum files, the
# rulecheck source and this script, so the cold build happens once per machine. Prints the directory holding `helm` on its last line
# of stdout; the CRDs are in ../crds from there.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
helm_version="v4.3.2"
operator_module="github.com/prometheus-operator/prometheus-operator"
operator_version="v0.85.0"
operator_sum="h1:M5xLCLEoaW2IJfnuCwFzzpL+jSVQu3KGT84Pye+fW8s="
crds=(monitoring.coreos.com_prometheusrules.yaml monitoring.coreos.com_podmonitors.yaml)

die() { echo "helm/build.sh: error: $*" >&2; exit 1; }

command -v go >/dev/null 2>&1 || die "Go is not installed or not on PATH. helm is built from its Go module: install Go >= 1.26 (https://go.dev/doc/install, or 'apt-get install golang-go' if your distribution ships 1.26) and run again."
go_minor="$(go env GOVERSION | sed -E 's/^go1\.([0-9]+).*/\1/')"
[[ "$go_minor" =~ ^[0-9]+$ ]] && (( go_minor >= 26 )) || die "Go $(go env GOVERSION) is too old: helm $helm_version needs Go >= 1.26."
grep -q "helm.sh/helm/v4 $helm_version" "$here/go.mod" || die "go.mod does not pin helm.sh/helm/v4 $helm_version: change both together."

cache_root="${DOWNSYNC_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/downsync}"
key="$(cat "$here/go.mod" "$here/go.sum" "$here/rulecheck/go.mod" "$here/rulecheck/go.sum" "$here/rulecheck/main.go" "$here/build.sh" | sha256sum | cut -c1-16)"
out="$cache_root/helm-$helm_version-$key"

have_all() {
  [[ -x "$out/bin/helm" && -x "$out/bin/rulecheck" ]] || return 1
  local c; for c in "${crds[@]}"; do [[ -s "$out/crds/$c" ]] || return 1; done
}
if have_all; then
  echo "helm/build.sh: using cached helm in $out/bin" >&2
  echo "$out/bin"
  exit 0
fi

mkdir -p "$out"
# One build at a time per cache entry: parallel test runs wait instead of building twice.
exec 9>"$out/.lock"
flock 9
if have_all; then echo "$out/bin"; exit 0; fi

export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=readonly
cd "$here"
echo "helm/build.sh: downloading Go modules for helm $helm_version ..." >&2
if ! go mod download 2>"$out/download.log"; then
  tail -n 20 "$out/download.log" >&2
  die "a Go module could not be fetched (log above, full log in $out/download.log). Check that the Go module proxy is reachable (go env GOPROXY = $(go env GOPROXY)) and that GOFLAGS/GOPRIVATE do not block helm.sh."
fi

ldflags="-s -w -X helm.sh/helm/v4/internal/version.version=$helm_version -X helm.sh/helm/v4/internal/version.gitTreeState=clean"
tmp="$out/bin.tmp"
rm -rf "$tmp"; mkdir -p "$tmp"
start=$(date +%s)
echo "helm/build.sh: building helm $helm_version (a cold build takes a few minutes on 2 cores) ..." >&2
if ! go build -trimpath -ldflags "$ldflags" -o "$tmp/helm" helm.sh/helm/v4/cmd/helm 2>"$out/build.log"; then
  tail -n 30 "$out/build.log" >&2
  die "building helm failed (log above, full log in $out/build.log)"
fi
"$tmp/helm" version --short >/dev/null 2>&1 || die "the built helm does not run ($tmp/helm version failed)"
echo "helm/build.sh: building rulecheck (Prometheus' rule parser) ..." >&2
if ! (cd "$here/rulecheck" && go mod download 2>"$out/rulecheck.log" && go build -trimpath -ldflags "-s -w" -o "$tmp/rulecheck" . 2>>"$out/rulecheck.log"); then
  tail -n 30 "$out/rulecheck.log" >&2
  die "building rulecheck failed (log above, full log in $out/rulecheck.log)"
fi

# The CRDs: the module zip is verified by the Go checksum database, and pinned here as well.
echo "helm/build.sh: fetching the monitoring.coreos.com CRDs ($operator_module $operator_version) ..." >&2
info="$(cd "$tmp" && GOFLAGS= go mod download -json "$operator_module@$operator_version" 2>"$out/crds.log")" || {
  tail -n 20 "$out/crds.log" >&2
  die "could not fetch $operator_module@$operator_version from the Go module proxy (log above)."
}
sum="$(sed -n 's/^[[:space:]]*"Sum": "\(.*\)",\{0,1\}$/\1/p' <<<"$info")"
dir="$(sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p' <<<"$info")"
[[ "$sum" == "$operator_sum" ]] || die "$operator_module@$operator_version has checksum '$sum', not the pinned $operator_sum."
mkdir -p "$tmp/crds"
for c in "${crds[@]}"; do
  cp "$dir/example/prometheus-operator-crd/$c" "$tmp/crds/$c" || die "$c is not in $operator_module@$operator_version"
done
rm -rf "$out/bin" "$out/crds"
mv "$tmp/crds" "$out/crds"
mv "$tmp" "$out/bin"
echo "helm/build.sh: helm $helm_version and rulecheck built in $(( $(date +%s) - start ))s ($(du -h "$out/bin/helm" | cut -f1)) into $out/bin" >&2
echo "$out/bin"

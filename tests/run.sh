#!/usr/bin/env bash
# The test command: everything downsync's tests need, from a fresh machine.
#
#   tests/run.sh
#
# In order: installs what is missing (the wasm32-wasip2 target, rustfmt, clippy, Debian
# packages), builds the Go control plane, helm, and the OCI registry with cosign (cached under
# ~/.cache/downsync), installs the Python and JavaScript plugin toolchains
# (tests/guest-toolchains.sh, cached likewise), then runs cargo fmt --check, cargo clippy
# -D warnings, the unit tests, and the integration tests against two real control planes
# (upstream and downstream) that it starts and always stops.
#
# With DOWNSYNC_UPSTREAM_KUBECONFIG and DOWNSYNC_DOWNSTREAM_KUBECONFIG set, the integration
# tests run against those clusters instead and no control plane is built or started.
#
# The kcp tests (tests/tests/run_kcp.rs) have a kcp as their upstream: kcp v0.26.0, built from
# Go modules (tests/cluster/kcp/build.sh, cached likewise) and started once for all of them
# (tests/cluster/kcp/controlplane.sh), unless DOWNSYNC_KCP_KUBECONFIG names a running kcp's
# admin kubeconfig (current context: its root workspace).
#
#   tests/run.sh --coverage
#
# runs the same unit and integration tests under cargo llvm-cov (installing llvm-tools-preview
# and cargo-llvm-cov first) and writes docs/coverage.md: lines covered per module of host/src.
set -euo pipefail

coverage=0
case "${1:-}" in
  --coverage) coverage=1 ;;
  "") ;;
  *) echo "usage: tests/run.sh [--coverage]" >&2; exit 2 ;;
esac

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
cache="${DOWNSYNC_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/downsync}"
started=()

step() { printf '\n==> %s\n' "$*" >&2; }
die() { echo "tests/run.sh: error: $*" >&2; exit 1; }

kcp_started=""
cleanup() {
  local name
  for name in "${started[@]}"; do tests/cluster/controlplane.sh down "$name" || true; done
  if [[ -n "$kcp_started" ]]; then tests/cluster/kcp/controlplane.sh down "$kcp_started" || true; fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

step "toolchain"
command -v cargo >/dev/null 2>&1 || die "cargo is missing: install Rust with rustup (https://rustup.rs)"
if command -v rustup >/dev/null 2>&1; then
  rustup component add rustfmt clippy >/dev/null 2>&1 || die "rustup could not add rustfmt and clippy"
  rustup target add wasm32-wasip2 >/dev/null 2>&1 || die "rustup could not add the wasm32-wasip2 target"
else
  rustc --print target-list | grep -qx wasm32-wasip2 || die "rustup is missing and wasm32-wasip2 is not available"
fi
missing=()
# python3 and node (with npm) run the Python and JavaScript plugin toolchains (guest-toolchains.sh).
for pair in openssl:openssl curl:curl ss:iproute2 flock:util-linux base64:coreutils python3:python3-venv node:nodejs npm:npm; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
done
if (( ${#missing[@]} )); then
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    die "missing packages: ${missing[*]} (Debian: sudo apt-get install ${missing[*]})"
  fi
fi
# Build outside the checkout so a fresh clone (CI) reuses compiled dependencies.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$cache/cargo-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

external=0
if [[ -n "${DOWNSYNC_UPSTREAM_KUBECONFIG:-}" && -n "${DOWNSYNC_DOWNSTREAM_KUBECONFIG:-}" ]]; then
  external=1
else
  step "control plane binaries (Kubernetes from Go modules; cached)"
  bin="$(tests/cluster/build.sh | tail -n 1)"
  export PATH="$bin:$PATH"
fi
if [[ -z "${DOWNSYNC_KCP_KUBECONFIG:-}" ]]; then
  step "kcp binary (kcp v0.26.0 from Go modules; cached)"
  tests/cluster/kcp/build.sh >/dev/null
fi

# The OCI plugin source tests pull from a real registry (the CNCF Distribution registry, with TLS
# and htpasswd auth, which each test starts with tests/cluster/registry/registry.sh) and sign into
# it with the real cosign CLI: registry, cosign and a bcrypt htpasswd helper, built from their Go
# modules (tests/cluster/registry/build.sh); DOWNSYNC_REGISTRY_BIN set beforehand skips it.
if [[ -z "${DOWNSYNC_REGISTRY_BIN:-}" ]]; then
  step "OCI registry and cosign for the OCI source tests (distribution v3.1.2, cosign v2.6.5 from Go modules; cached)"
  DOWNSYNC_REGISTRY_BIN="$(tests/cluster/registry/build.sh | tail -n 1)"
  export DOWNSYNC_REGISTRY_BIN
fi

# The chart tests (tests/tests/chart.rs) run the real helm v4, built from its Go module with the
# Prometheus Operator CRDs beside it (tests/helm/build.sh); DOWNSYNC_HELM set beforehand skips it.
if [[ -z "${DOWNSYNC_HELM:-}" ]]; then
  step "helm v4 for the chart tests (from the helm.sh/helm/v4 Go module; cached)"
  helm_bin="$(tests/helm/build.sh | tail -n 1)"
  export DOWNSYNC_HELM="$helm_bin/helm"
fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "plugins (wasm32-wasip2 components)"
plugin_crates=(
  downsync-plugin-minimal
  downsync-plugin-service
  downsync-plugin-persistent-volume
  downsync-plugin-immutable-config
  downsync-plugin-service-account
  downsync-example-hpa-replicas
  downsync-plugin-testing-faulty
  downsync-plugin-testing-overlap
  downsync-plugin-testing-stamp
  downsync-plugin-testing-counter
  downsync-plugin-testing-reserved
  downsync-plugin-testing-describe-panic
  downsync-plugin-testing-legacy
  downsync-plugin-testing-metadata-reader
)
cargo build --locked --target wasm32-wasip2 --profile plugin "${plugin_crates[@]/#/-p=}"
export DOWNSYNC_PLUGIN_BUILD_DIR="$CARGO_TARGET_DIR/wasm32-wasip2/plugin"

step "guest toolchains: componentize-py and jco, the Python and JavaScript examples (cached)"
# Installs the pinned tools and builds examples/plugins/{python,js}-hpa-replicas once per input
# (cold: about a minute; warm: nothing to do), and exports where they are for the tests.
guest_env="$(tests/guest-toolchains.sh)" || die "tests/guest-toolchains.sh failed (see above)"
eval "$guest_env"

if (( ! coverage )); then
  step "unit tests"
  cargo test --workspace --locked --exclude downsync-tests
fi

if (( ! external )); then
  step "starting the upstream and downstream control planes"
  # The downstream also binds volumes, as a real cluster does: the same list as
  # DOWNSTREAM_CONTROLLERS in tests/src/lib.rs (tests/tests/run_special_kinds.rs relies on it).
  gc=garbage-collector-controller,namespace-controller
  volumes=persistentvolume-binder-controller,persistentvolume-protection-controller,persistentvolumeclaim-protection-controller
  declare -A controllers=([upstream]="$gc" [downstream]="$gc,$volumes")
  for side in upstream downstream; do
    name="ci-$side-$$"
    started+=("$name")
    # The downstream's audit log tells which replica wrote what (tests/tests/run_ha.rs).
    audit=(); [[ $side == downstream ]] && audit=(--audit)
    kc="$(tests/cluster/controlplane.sh up "$name" --owner-pid $$ --controllers "${controllers[$side]}" "${audit[@]}" | tail -n 1)"
    export "DOWNSYNC_${side^^}_KUBECONFIG=$kc"
  done
fi
if [[ -z "${DOWNSYNC_KCP_KUBECONFIG:-}" ]]; then
  step "starting kcp (the upstream of the kcp tests)"
  kcp_started="ci-kcp-$$"
  DOWNSYNC_KCP_KUBECONFIG="$(tests/cluster/kcp/controlplane.sh up "$kcp_started" --owner-pid $$ | tail -n 1)"
  export DOWNSYNC_KCP_KUBECONFIG
fi

if (( coverage )); then
  step "coverage: unit and integration tests under cargo llvm-cov"
  rustup component add llvm-tools-preview >/dev/null 2>&1 || die "rustup could not add llvm-tools-preview"
  command -v cargo-llvm-cov >/dev/null 2>&1 || cargo install --locked cargo-llvm-cov
  # Instrumented builds live apart from the ordinary ones, so neither invalidates the other.
  cov_target="$cache/cargo-target-cov"
  eval "$(CARGO_TARGET_DIR="$cov_target" cargo llvm-cov show-env --sh 2>/dev/null)"
  export CARGO_TARGET_DIR="$cov_target"
  cargo llvm-cov clean --workspace
  # The integration tests build and run the downsync binary themselves; with this environment
  # it is instrumented too, so what the binary runs counts.
  # Every test binary runs (a failure does not hide the coverage of the rest); the report is
  # written either way, and a failure still fails the run.
  status=0
  cargo test --workspace --locked --no-fail-fast || status=$?
  cargo llvm-cov report --lcov --output-path "$cov_target/lcov.info"
  python3 tests/coverage_table.py "$cov_target/lcov.info" "$(git rev-parse --short=12 HEAD)" > docs/coverage.md
  echo "wrote docs/coverage.md" >&2
  (( status == 0 )) || die "tests failed under coverage (exit $status); docs/coverage.md was written anyway"
  exit 0
fi

step "integration tests (real kube-apiserver + etcd + garbage collector)"
cargo test --locked --no-fail-fast -p downsync-tests

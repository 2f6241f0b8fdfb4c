#!/usr/bin/env bash
# The kcp demo (`examples/demo.sh --kcp`): many kcp workspaces into one physical cluster.
#
# Builds what it needs (kcp v0.26.0 and the Kubernetes control plane from their Go modules,
# cached; about 8 minutes for kcp the first time), starts a kcp and a downstream control plane,
# puts the example APIExport (examples/kcp/apiexport.yaml) in a provider workspace `downsync`,
# binds it in two tenant workspaces that each hold namespace `shop` with ConfigMap `settings`,
# and runs `downsync run` against the export's virtual workspace (`.../clusters/*`). Then:
# two copies in two downstream namespaces; a change in one workspace changes only its copy;
# a workspace that rejects the export's claims loses its copy and its namespace downstream.
# Everything it started is stopped at the end, whatever happens.
#
# Environment: DEMO_TIMEOUT (default 60) bounds each wait, in seconds; CARGO_TARGET_DIR
# (default ~/.cache/downsync/cargo-target, shared with tests/run.sh).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
cache="${DOWNSYNC_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/downsync}"
timeout="${DEMO_TIMEOUT:-60}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$cache/cargo-target}"
work="$(mktemp -d "${TMPDIR:-/tmp}/downsync-kcp-demo.XXXXXX")"
log="$work/downsync.log"
n=0 ds_pid="" started=() kcp_name="" t_start=$SECONDS

step() { n=$(( n + 1 )); printf '\n%d. %s\n' "$n" "$*"; }
fact() { printf '   %s\n' "$*"; }
die() { printf '\nkcp demo failed: %s\n' "$*" >&2; exit 1; }
wait_until() {
  local what="$1" deadline=$(( SECONDS + timeout )); shift
  until "$@"; do
    (( SECONDS < deadline )) || die "timed out after ${timeout}s waiting for $what"
    [[ -z "$ds_pid" ]] || kill -0 "$ds_pid" 2>/dev/null || die "downsync exited (log: $log)"
    sleep 0.3
  done
}

cleanup() {
  local rc="$1"
  trap '' INT TERM
  set +e
  if [[ -n "$ds_pid" ]]; then kill -TERM "$ds_pid" 2>/dev/null; wait "$ds_pid" 2>/dev/null; fi
  if (( rc != 0 )) && [[ -s "$log" ]]; then
    echo "---- last 20 lines of the downsync log ($log) ----" >&2
    tail -n 20 "$log" >&2
  fi
  [[ -n "$kcp_name" ]] && tests/cluster/kcp/controlplane.sh down "$kcp_name" >/dev/null 2>&1
  local name
  for name in "${started[@]}"; do tests/cluster/controlplane.sh down "$name" >/dev/null 2>&1; done
  echo "   stopped kcp and the downstream control plane; downsync log: $log"
}
trap 'rc=$?; cleanup "$rc"; exit "$rc"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

echo "downsync kcp demo (work dir $work)"

step "Tools: kcp, the downstream control plane, downsync"
bin="$(tests/cluster/build.sh 2>"$work/k8s-build.log" | tail -n 1)" \
  || { tail -n 20 "$work/k8s-build.log" >&2; die "the control plane binaries could not be built"; }
kubectl="$bin/kubectl"
tests/cluster/kcp/build.sh >"$work/kcp-build.log" 2>&1 \
  || { tail -n 20 "$work/kcp-build.log" >&2; die "kcp could not be built (log above)"; }
cargo build --quiet -p downsync 2>"$work/cargo.log" || { tail -n 20 "$work/cargo.log" >&2; die "cargo build failed"; }
downsync="$CARGO_TARGET_DIR/debug/downsync"
fact "kcp v0.26.0 and Kubernetes v1.37.2 (cached), downsync $("$downsync" --version | cut -d' ' -f2-)"

step "Start kcp and a downstream cluster"
kcp_name="demo-kcp-$$"
kcp_kc="$(tests/cluster/kcp/controlplane.sh up "$kcp_name" --owner-pid $$ 2>"$work/kcp.log" | tail -n 1)" \
  || { tail -n 20 "$work/kcp.log" >&2; die "kcp did not start"; }
down_name="demo-kcp-downstream-$$"
started+=("$down_name")
down_kc="$(tests/cluster/controlplane.sh up "$down_name" --owner-pid $$ \
  --controllers garbage-collector-controller,namespace-controller 2>"$work/down.log" | tail -n 1)" \
  || { tail -n 20 "$work/down.log" >&2; die "the downstream control plane did not start"; }
base="$("$kubectl" --kubeconfig "$kcp_kc" config view --minify -o jsonpath='{.clusters[0].cluster.server}')"
base="${base%%/clusters/*}"
fact "kcp:        $base"
fact "downstream: $("$kubectl" --kubeconfig "$down_kc" config view --minify -o jsonpath='{.clusters[0].cluster.server}')"

# kubectl in a kcp workspace: the admin kubeconfig with the workspace's URL.
ws() { local path="$1"; shift; "$kubectl" --kubeconfig "$kcp_kc" --server "$base/clusters/$path" "$@"; }
dn() { "$kubectl" --kubeconfig "$down_kc" "$@"; }
make_workspace() {
  ws root apply -f - >/dev/null <<EOF
apiVersion: tenancy.kcp.io/v1alpha1
kind: Workspace
metadata: {name: $1}
spec: {}
EOF
  wait_until "workspace $1 to be ready" is Ready ws root get workspace "$1" -o jsonpath='{.status.phase}'
}
# `is WANT CMD...`: CMD prints WANT.
is() { local want="$1" got; shift; got="$("$@" 2>/dev/null)" || return 1; [[ "$got" == "$want" ]]; }
not_empty() { local got; got="$("$@" 2>/dev/null)" || return 1; [[ -n "$got" ]]; }

step "A provider workspace with the example APIExport, two tenants binding it"
make_workspace downsync
ws root:downsync apply -f examples/kcp/apiexport.yaml >/dev/null
wait_until "the APIExport's virtual workspace" \
  not_empty ws root:downsync get apiexport downsync -o jsonpath='{.status.virtualWorkspaces[0].url}'
vw="$(ws root:downsync get apiexport downsync -o jsonpath='{.status.virtualWorkspaces[0].url}')"
fact "APIExport downsync: virtual workspace ${vw#"$base"}"
declare -A cluster
for t in tenant-a tenant-b; do
  make_workspace "$t"
  ws "root:$t" apply -f examples/kcp/apibinding.yaml >/dev/null
  wait_until "$t's APIBinding to be bound" is Bound ws "root:$t" get apibinding downsync -o jsonpath='{.status.phase}'
  ws "root:$t" create namespace shop >/dev/null
  ws "root:$t" -n shop create configmap settings --from-literal=tenant="$t" --from-literal=color=blue >/dev/null
  cluster[$t]="$(ws root get workspace "$t" -o jsonpath='{.spec.cluster}')"
  fact "workspace $t (logical cluster ${cluster[$t]}): namespace shop, ConfigMap settings"
done

step "downsync run against the export's virtual workspace: every workspace at one URL"
up_kc="$work/upstream.kubeconfig"
"$kubectl" --kubeconfig "$kcp_kc" config view --raw --minify --flatten >"$up_kc"
"$kubectl" --kubeconfig "$up_kc" config set-cluster "$("$kubectl" --kubeconfig "$up_kc" config view -o jsonpath='{.clusters[0].name}')" \
  --server "${base}${vw#"$base"}/clusters/*" >/dev/null
"$downsync" run --upstream-kubeconfig "$up_kc" --downstream-kubeconfig "$down_kc" \
  --resource v1/ConfigMap --namespace shop --target demo --metrics-addr 127.0.0.1:0 --insecure-endpoints \
  >"$log" 2>&1 &
ds_pid=$!
copy_ns() { dn get namespaces -l downsync.dev/target=demo -o json \
  | python3 -c 'import json,sys
for n in json.load(sys.stdin)["items"]:
    loc = json.loads(n["metadata"].get("annotations", {}).get("downsync.dev/namespace-locator", "{}"))
    if loc.get("cluster") == sys.argv[1]: print(n["metadata"]["name"])' "$1"; }
for t in tenant-a tenant-b; do
  wait_until "$t's namespace downstream" not_empty copy_ns "${cluster[$t]}"
done
declare -A down_ns
for t in tenant-a tenant-b; do
  down_ns[$t]="$(copy_ns "${cluster[$t]}")"
  wait_until "$t's ConfigMap in ${down_ns[$t]}" not_empty dn -n "${down_ns[$t]}" get configmap settings -o name
  fact "$t -> downstream namespace ${down_ns[$t]}: settings.tenant=$(dn -n "${down_ns[$t]}" get configmap settings -o jsonpath='{.data.tenant}'), upstream-cluster=$(dn -n "${down_ns[$t]}" get configmap settings -o jsonpath='{.metadata.annotations.downsync\.dev/upstream-cluster}')"
done
fact "same namespace and name in two workspaces: two objects downstream, never one"

step "A change in tenant-a changes tenant-a's copy only"
b_rv="$(dn -n "${down_ns[tenant-b]}" get configmap settings -o jsonpath='{.metadata.resourceVersion}')"
ws root:tenant-a -n shop patch configmap settings --type merge -p '{"data":{"color":"green"}}' >/dev/null
wait_until "tenant-a's copy to turn green" \
  is green dn -n "${down_ns[tenant-a]}" get configmap settings -o jsonpath='{.data.color}'
[[ "$(dn -n "${down_ns[tenant-b]}" get configmap settings -o jsonpath='{.metadata.resourceVersion}')" == "$b_rv" ]] \
  || die "tenant-b's copy was written"
fact "tenant-a: color=green downstream; tenant-b's copy untouched (resourceVersion $b_rv)"

step "tenant-b rejects the export's claims: its copy and its namespace go, tenant-a's stay"
claims="$(ws root:tenant-b get apibinding downsync -o json | python3 -c 'import json,sys
b = json.load(sys.stdin)
cs = b["spec"]["permissionClaims"]
for c in cs: c["state"] = "Rejected"
print(json.dumps({"spec": {"permissionClaims": cs}}))')"
ws root:tenant-b patch apibinding downsync --type merge -p "$claims" >/dev/null
gone() { ! dn -n "$1" get configmap settings -o name >/dev/null 2>&1; }
wait_until "tenant-b's copy to go" gone "${down_ns[tenant-b]}"
is_deleting_or_gone() {
  local ts
  ts="$(dn get namespace "$1" --ignore-not-found -o jsonpath='{.metadata.deletionTimestamp}' 2>/dev/null)" || return 1
  [[ -n "$ts" ]] || [[ -z "$(dn get namespace "$1" --ignore-not-found -o name 2>/dev/null)" ]]
}
wait_until "tenant-b's downstream namespace to go" is_deleting_or_gone "${down_ns[tenant-b]}"
fact "tenant-b's copy and its namespace ${down_ns[tenant-b]} are gone downstream; its object is still in its workspace: $(ws root:tenant-b -n shop get configmap settings -o name)"
dn -n "${down_ns[tenant-a]}" get configmap settings -o name >/dev/null || die "tenant-a's copy went too"
fact "tenant-a's copy stays"

echo
echo "kcp demo done in $(( SECONDS - t_start ))s"

#!/usr/bin/env bash
# The demo: two local control planes, downsync between them, and the rules at work.
#
#   examples/demo.sh
#       Builds what it needs (the Go control plane is cached, see tests/cluster/build.sh),
#       starts an upstream and a downstream control plane, runs `downsync run` between them,
#       walks through create / keep downstream fields / update / hot-swap a rule / delete,
#       and stops everything again, whatever happens.
#   examples/demo.sh --upstream-context A --downstream-context B
#       The same demo against two existing clusters (contexts of $KUBECONFIG or
#       ~/.kube/config); DEMO_UPSTREAM_KUBECONFIG / DEMO_DOWNSTREAM_KUBECONFIG (or
#       --upstream-kubeconfig / --downstream-kubeconfig) pick kubeconfig files instead.
#       Nothing is started; the demo refuses to run if namespace `demo` or the PersistentVolume
#       `downsync-demo-pv` already exists on either side, and deletes both at the end; downsync
#       syncs only objects labelled app.kubernetes.io/part-of=downsync-demo in namespace demo.
#
#   examples/demo.sh --kcp
#       Many kcp workspaces into one cluster: a kcp (v0.26.0, built from its Go module and
#       cached) with an APIExport bound in two workspaces, downsync at the export's virtual
#       workspace, each workspace's objects kept apart downstream (examples/kcp/demo.sh).
#
# Environment: DEMO_TIMEOUT (default 60) bounds each wait, in seconds; CARGO_TARGET_DIR
# (default ~/.cache/downsync/cargo-target, shared with tests/run.sh).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
cache="${DOWNSYNC_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/downsync}"
timeout="${DEMO_TIMEOUT:-60}"
t_start=$SECONDS

usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "${BASH_SOURCE[0]}" >&2; exit 2; }

up_ctx="" dn_ctx=""
up_kcfg="${DEMO_UPSTREAM_KUBECONFIG:-}" dn_kcfg="${DEMO_DOWNSTREAM_KUBECONFIG:-}"
while (( $# )); do
  case "$1" in
    --upstream-context) up_ctx="${2:?}"; shift 2 ;;
    --downstream-context) dn_ctx="${2:?}"; shift 2 ;;
    --upstream-kubeconfig) up_kcfg="${2:?}"; shift 2 ;;
    --downstream-kubeconfig) dn_kcfg="${2:?}"; shift 2 ;;
    --kcp) exec "$root/examples/kcp/demo.sh" ;;
    -h|--help) usage ;;
    *) echo "demo.sh: unknown argument '$1'" >&2; usage ;;
  esac
done
external=0
if [[ -n "$up_ctx$dn_ctx$up_kcfg$dn_kcfg" ]]; then
  external=1
  [[ -n "$up_ctx$up_kcfg" && -n "$dn_ctx$dn_kcfg" ]] \
    || { echo "demo.sh: give both sides: --upstream-context and --downstream-context (or the DEMO_*_KUBECONFIG pair)" >&2; exit 2; }
fi

# ---- output and waiting --------------------------------------------------------------------

n=0
step() { n=$(( n + 1 )); printf '\n%d. %s\n' "$n" "$*"; }
fact() { printf '   %s\n' "$*"; }
die() { printf '\ndemo failed: %s\n' "$*" >&2; exit 1; }
now_ms() { date +%s%3N; }
since() { local ms=$(( $(now_ms) - $1 )); printf '%d.%ds' $(( ms / 1000 )) $(( ms % 1000 / 100 )); }

ds_pid=""
ds_alive() { [[ -z "$ds_pid" ]] || kill -0 "$ds_pid" 2>/dev/null; }

# wait_until DESCRIPTION COMMAND...: retries COMMAND until it succeeds, at most $timeout seconds.
wait_until() {
  local what="$1" deadline=$(( SECONDS + timeout )); shift
  until "$@" >/dev/null 2>&1; do
    ds_alive || die "downsync exited while waiting for $what"
    if (( SECONDS >= deadline )); then
      [[ -n "${wait_hint:-}" ]] && "$wait_hint" >&2
      die "timed out after ${timeout}s waiting for $what"
    fi
    sleep 0.2
  done
}
# is WANT COMMAND...: COMMAND succeeds and prints exactly WANT.
is() { local want="$1" got; shift; got="$("$@" 2>/dev/null)" || return 1; [[ "$got" == "$want" ]]; }
isnt() { local unwanted="$1" got; shift; got="$("$@" 2>/dev/null)" || return 1; [[ "$got" != "$unwanted" ]]; }

# ---- cleanup: always ------------------------------------------------------------------------

work="$(mktemp -d "${TMPDIR:-/tmp}/downsync-demo.XXXXXX")"
log="$work/downsync.log"
started=()       # local control planes
created=0        # external mode: the demo's objects may exist
done=0
kubectl=""

# The script's own stdout and stderr: a signal's trap may run while a command's output is
# redirected (to a build log, to /dev/null), and the cleanup must still be seen.
exec {out}>&1 {err}>&2
cleaned=0
cleanup() {
  local rc="$1"
  (( cleaned )) && return 0
  cleaned=1
  # A second Ctrl-C must not leave the clusters running: finish the cleanup first.
  trap '' INT TERM
  set +e
  exec 1>&"$out" 2>&"$err"
  if [[ -n "$ds_pid" ]] && kill -0 "$ds_pid" 2>/dev/null; then
    kill -TERM "$ds_pid" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$ds_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$ds_pid" 2>/dev/null
  fi
  if (( rc != 0 )) && [[ -s "$log" ]]; then
    echo "---- last 20 lines of the downsync log ($log) ----" >&2
    tail -n 20 "$log" >&2
    echo "----" >&2
  fi
  if (( external && created )); then
    for side in up dn; do
      $side delete namespace demo --ignore-not-found --wait=false >/dev/null 2>&1
      $side delete pv downsync-demo-pv --ignore-not-found --wait=false >/dev/null 2>&1
    done
    for side in up dn; do
      $side wait --for=delete namespace/demo persistentvolume/downsync-demo-pv --timeout=60s >/dev/null 2>&1 \
        || echo "   (namespace demo or PV downsync-demo-pv is still being deleted ${side/dn/down}stream)"
    done
    echo "   removed namespace demo and PersistentVolume downsync-demo-pv from both clusters"
  fi
  local name
  for name in "${started[@]}"; do tests/cluster/controlplane.sh down "$name" >/dev/null 2>&1; done
  (( ${#started[@]} )) && echo "   stopped the control planes ${started[*]}"
  echo "   downsync log: $log"
  (( done )) && echo "demo done in $(( SECONDS - t_start ))s"
}
trap 'rc=$?; cleanup "$rc"; exit "$rc"' EXIT
trap 'cleanup 130; exit 130' INT
trap 'cleanup 143; exit 143' TERM

# Stops PID when this script is gone, even after a `kill -9` (the control planes have their own
# watchdog: --owner-pid).
watch_owner() {
  setsid bash -c 'while kill -0 "$1" 2>/dev/null && kill -0 "$2" 2>/dev/null; do sleep 1; done; kill -TERM "$2" 2>/dev/null' \
    demo-watchdog $$ "$1" >/dev/null 2>&1 < /dev/null {out}>&- {err}>&- &
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port() {
  local p
  for _ in $(seq 100); do p=$(( 20000 + RANDOM % 30000 )); port_free "$p" && { echo "$p"; return; }; done
  die "no free loopback port"
}

up() { "$kubectl" "${up_args[@]}" "$@"; }
dn() { "$kubectl" "${dn_args[@]}" "$@"; }
server_of() { "$kubectl" "$@" config view --minify -o jsonpath='{.clusters[0].cluster.server}'; }

echo "downsync demo (work dir $work)"

# ---- 1. tools and clusters ------------------------------------------------------------------

if (( external )); then
  step "Tools, and the two existing clusters"
else
  step "Tools, and two local control planes"
fi
command -v cargo >/dev/null 2>&1 || die "cargo is missing: install Rust with rustup (https://rustup.rs)"
command -v curl >/dev/null 2>&1 || die "curl is missing (Debian: apt-get install curl)"
if command -v rustup >/dev/null 2>&1; then
  rustup target add wasm32-wasip2 >/dev/null 2>&1 || die "rustup could not add the wasm32-wasip2 target"
else
  rustc --print target-list | grep -qx wasm32-wasip2 || die "rustup is missing and wasm32-wasip2 is not available"
fi
fact "rust: $(rustc --version | cut -d' ' -f2), target wasm32-wasip2"

up_args=() dn_args=() ds_args=()
if (( external )); then
  if command -v kubectl >/dev/null 2>&1; then
    kubectl="$(command -v kubectl)"
  else
    bin="$(tests/cluster/build.sh 2>"$work/k8s-build.log" | tail -n 1)" || { tail -n 20 "$work/k8s-build.log" >&2; die "no kubectl on PATH, and building one failed"; }
    kubectl="$bin/kubectl"
  fi
  [[ -n "$up_kcfg" ]] && { up_args+=(--kubeconfig "$up_kcfg"); ds_args+=(--upstream-kubeconfig "$up_kcfg"); }
  [[ -n "$up_ctx" ]] && { up_args+=(--context "$up_ctx"); ds_args+=(--upstream-context "$up_ctx"); }
  [[ -n "$dn_kcfg" ]] && { dn_args+=(--kubeconfig "$dn_kcfg"); ds_args+=(--downstream-kubeconfig "$dn_kcfg"); }
  [[ -n "$dn_ctx" ]] && { dn_args+=(--context "$dn_ctx"); ds_args+=(--downstream-context "$dn_ctx"); }
  up_server="$(server_of "${up_args[@]}")" || die "cannot read the upstream kubeconfig/context"
  dn_server="$(server_of "${dn_args[@]}")" || die "cannot read the downstream kubeconfig/context"
  [[ "$up_server" != "$dn_server" ]] || die "upstream and downstream are the same cluster ($up_server)"
  for side in up dn; do
    $side get --raw /readyz >/dev/null 2>&1 || die "the ${side/dn/down}stream cluster is not reachable"
    [[ -z "$($side get namespace demo --ignore-not-found -o name)" ]] \
      || die "namespace demo already exists ${side/dn/down}stream; the demo creates and deletes it, so it does not run there"
    [[ -z "$($side get pv downsync-demo-pv --ignore-not-found -o name)" ]] \
      || die "PersistentVolume downsync-demo-pv already exists ${side/dn/down}stream"
  done
  fact "kubectl: $kubectl"
  fact "upstream:   $up_server"
  fact "downstream: $dn_server"
else
  t0=$(now_ms)
  bin="$(tests/cluster/build.sh 2>"$work/k8s-build.log" | tail -n 1)" \
    || { tail -n 20 "$work/k8s-build.log" >&2; die "the control plane binaries could not be built (log above)"; }
  kubectl="$bin/kubectl"
  fact "control plane binaries (Kubernetes v1.37.2, cached): $bin"
  declare -A kcfg
  # The test control planes run only the garbage collector and the namespace controller by
  # default. A physical cluster also binds volumes and guards them with finalizers: the
  # downstream runs the PV binder too, and both sides the protection controllers (the apiserver
  # adds their finalizers, the controllers release them).
  gc=garbage-collector-controller,namespace-controller
  protection=persistentvolume-protection-controller,persistentvolumeclaim-protection-controller
  declare -A ctrls=([upstream]="$gc,$protection" [downstream]="$gc,persistentvolume-binder-controller,$protection")
  for side in upstream downstream; do
    name="demo-$side-$$"
    started+=("$name")
    tests/cluster/controlplane.sh up "$name" --owner-pid $$ --controllers "${ctrls[$side]}" >"$work/$side.kubeconfig-path" 2>"$work/controlplane-$side.log" {out}>&- {err}>&- &
    eval "pid_$side=\$!"
  done
  for side in upstream downstream; do
    eval "wait \$pid_$side" || { tail -n 30 "$work/controlplane-$side.log" >&2; die "the $side control plane did not start (log above)"; }
    kcfg[$side]="$(tail -n 1 "$work/$side.kubeconfig-path")"
  done
  up_args=(--kubeconfig "${kcfg[upstream]}") dn_args=(--kubeconfig "${kcfg[downstream]}")
  ds_args=(--upstream-kubeconfig "${kcfg[upstream]}" --downstream-kubeconfig "${kcfg[downstream]}")
  fact "upstream:   demo-upstream-$$   $(server_of "${up_args[@]}")  (kubeconfig ${kcfg[upstream]})"
  fact "downstream: demo-downstream-$$ $(server_of "${dn_args[@]}")  (kubeconfig ${kcfg[downstream]})"
  fact "volume controllers: PV binder downstream, PV/PVC protection on both sides"
  fact "ready in $(since "$t0")"
fi

# ---- 2. build -------------------------------------------------------------------------------

step "Build the rule plugins (wasm32-wasip2 components) and downsync"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$cache/cargo-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
t0=$(now_ms)
fact "cargo build (the first build takes several minutes; output in $work/build.log)"
{
  cargo build --locked --target wasm32-wasip2 --profile plugin \
    -p downsync-plugin-service -p downsync-plugin-persistent-volume \
    -p downsync-plugin-immutable-config -p downsync-example-hpa-replicas &&
  cargo build --locked -p downsync
} >"$work/build.log" 2>&1 || { tail -n 30 "$work/build.log" >&2; die "the build failed (log above)"; }
wasm="$CARGO_TARGET_DIR/wasm32-wasip2/plugin"
downsync="$CARGO_TARGET_DIR/debug/downsync"
plugins="$work/plugins"
mkdir -p "$plugins"
for p in service persistent-volume immutable-config; do
  cp "$wasm/downsync_plugin_${p//-/_}.wasm" "$plugins/$p.wasm"
done
fact "built in $(since "$t0"): $downsync"
fact "plugins dir $plugins: $(cd "$plugins" && echo *.wasm)  (hpa-replicas comes later)"

# ---- 3. run ---------------------------------------------------------------------------------

step "Start downsync run"
port="$(free_port)"
metrics="127.0.0.1:$port"
resources=(v1/ConfigMap v1/Secret v1/Service apps/v1/Deployment v1/PersistentVolume v1/PersistentVolumeClaim)
# --namespace does not filter cluster-scoped kinds: the selector keeps the sync to the demo's
# own PersistentVolume (on an existing cluster, every PV would be copied otherwise).
selector=app.kubernetes.io/part-of=downsync-demo
# --insecure-endpoints: /metrics and /readyz plainly, on 127.0.0.1 only (a deployed downsync
# serves /metrics over HTTPS to callers its cluster authorises; see docs/operations.md).
NO_COLOR=1 "$downsync" run "${ds_args[@]}" --plugins-dir "$plugins" --metrics-addr "$metrics" --insecure-endpoints \
  --namespace demo --selector "$selector" "${resources[@]/#/--resource=}" >"$log" 2>&1 < /dev/null {out}>&- {err}>&- &
ds_pid=$!
watch_owner "$ds_pid"
fact "downsync run --namespace demo --selector $selector --plugins-dir ... --metrics-addr $metrics --insecure-endpoints \\"
fact "    ${resources[*]/#/--resource }"
t0=$(now_ms)
timeout=$(( timeout * 3 )) wait_until "downsync /readyz (it compiles the plugins once; later runs take them from the cache)" \
  curl -fsS --max-time 2 "http://$metrics/readyz"
fact "ready in $(since "$t0"): /readyz says $(curl -fsS "http://$metrics/readyz")"
grep -o 'plugin loaded plugin=[^ ]*' "$log" | sed 's/^/   log: /' || true

metric_sum() { curl -fsS "http://$metrics/metrics" | awk -v p="$1" 'index($0, p) == 1 { s += $NF } END { print s + 0 }'; }
above() { local now; now="$(metric_sum "$1")" || return 1; (( ${now%.*} > $2 )); }

# ---- 4. apply upstream ----------------------------------------------------------------------

step "Apply examples/demo/ upstream"
t0=$(now_ms)
created=1
applied="$(up apply -f examples/demo/ -o name)"
fact "upstream: applied $(wc -l <<<"$applied") objects: $(paste -sd' ' <<<"$applied")"
# Objects stamped by downsync downstream (namespaced ones in demo, and the PV).
owned_count() {
  local names
  names="$(dn get configmap,secret,service,deployment,pvc -n demo -l downsync.dev/managed-by -o name)" || return 1
  names+=$'\n'"$(dn get pv downsync-demo-pv --ignore-not-found -o name)" || return 1
  grep -c . <<<"$names" || true
}
wait_until "the 8 objects downstream" is 8 owned_count
fact "downstream, $(since "$t0") later (namespace demo created by downsync):"
cols='KIND:.kind,NAME:.metadata.name,OWNER:.metadata.annotations.downsync\.dev/owner'
{
  dn get configmap,secret,service,deployment,pvc -n demo -l downsync.dev/managed-by --no-headers -o custom-columns="$cols"
  dn get pv downsync-demo-pv --no-headers -o custom-columns="$cols"
} | awk '{ printf "     %-22s %-17s owner %s\n", $1, $2, $3 }'

# ---- 5. downstream-owned fields -------------------------------------------------------------

step "Downstream keeps what belongs to it"
svc_ip() { "$@" get service web -n demo -o jsonpath='{.spec.clusterIP}'; }
node_port() { local port="$1"; shift; "$@" get service web -n demo -o jsonpath="{.spec.ports[?(@.name==\"$port\")].nodePort}"; }
up_ip="$(svc_ip up)" dn_ip="$(svc_ip dn)"
up_np="$(node_port http up)" dn_np="$(node_port http dn)"
fact "Service web, upstream:   clusterIP $up_ip, nodePort $up_np (allocated by upstream, not copied)"
fact "Service web, downstream: clusterIP $dn_ip, nodePort $dn_np (allocated downstream)"
up label service web -n demo tier=frontend >/dev/null
up patch service web -n demo --type json \
  -p '[{"op":"add","path":"/spec/ports/-","value":{"name":"metrics","port":9090,"targetPort":9090}}]' >/dev/null
fact "upstream: label tier=frontend and a new port 'metrics' (9090) on Service web"
wait_until "the Service change downstream" is frontend dn get service web -n demo -o jsonpath='{.metadata.labels.tier}'
wait_until "the new port downstream" isnt "" node_port metrics dn
fact "downstream: label tier=$(dn get service web -n demo -o jsonpath='{.metadata.labels.tier}'), ports $(dn get service web -n demo -o jsonpath='{range .spec.ports[*]}{.name}:{.nodePort}{"\n"}{end}' | paste -sd' ')"
[[ "$(svc_ip dn)" == "$dn_ip" && "$(node_port http dn)" == "$dn_np" ]] \
  || die "the downstream Service lost its allocation: clusterIP $(svc_ip dn), nodePort $(node_port http dn)"
fact "downstream: clusterIP $(svc_ip dn), http nodePort $(node_port http dn): unchanged"

pv_state() { dn get pv downsync-demo-pv -o jsonpath='{.status.phase} {.spec.claimRef.namespace}/{.spec.claimRef.name} uid={.spec.claimRef.uid}'; }
pvc_state() { dn get pvc data -n demo -o jsonpath='{.status.phase} {.spec.volumeName} uid={.metadata.uid}'; }
show_binding() {
  echo "   downstream PV:  $(pv_state)"
  echo "   downstream PVC: $(pvc_state)"
  dn get events -n demo --field-selector involvedObject.name=data --no-headers \
    -o custom-columns='REASON:.reason,MESSAGE:.message' 2>/dev/null | sed 's/^/   downstream event: /'
}
wait_hint=show_binding wait_until "the downstream claim to be bound" is Bound dn get pvc data -n demo -o jsonpath='{.status.phase}'
wait_hint=show_binding wait_until "the downstream volume to be bound" is Bound dn get pv downsync-demo-pv -o jsonpath='{.status.phase}'
pv_before="$(pv_state)"
fact "downstream PV  downsync-demo-pv: $pv_before (bound by the downstream PV controller)"
fact "downstream PVC demo/data: $(pvc_state)"
up label pv downsync-demo-pv tier=gold >/dev/null
up label pvc data -n demo tier=gold >/dev/null
fact "upstream: label tier=gold on the PV and the PVC"
wait_until "the PV label downstream" is gold dn get pv downsync-demo-pv -o jsonpath='{.metadata.labels.tier}'
wait_until "the PVC label downstream" is gold dn get pvc data -n demo -o jsonpath='{.metadata.labels.tier}'
sleep 1 # let the downstream PV controller react, were the binding broken
[[ "$(pv_state)" == "$pv_before" ]] || { show_binding >&2; die "the downstream binding changed (was: $pv_before)"; }
fact "downstream PV  after the update: $(pv_state): binding kept, labels tier=$(dn get pv downsync-demo-pv -o jsonpath='{.metadata.labels.tier}')"

# ---- 6. updates -----------------------------------------------------------------------------

step "Change things upstream"
t0=$(now_ms)
up patch configmap web-config -n demo --type merge -p '{"data":{"greeting":"bonjour"}}' >/dev/null
wait_until "the ConfigMap change downstream" is bonjour dn get configmap web-config -n demo -o jsonpath='{.data.greeting}'
fact "ConfigMap web-config greeting: hello -> $(dn get configmap web-config -n demo -o jsonpath='{.data.greeting}') downstream ($(since "$t0"))"
t0=$(now_ms)
up set image deployment/web -n demo web=nginx:1.28-alpine >/dev/null
image() { dn get deployment web -n demo -o jsonpath='{.spec.template.spec.containers[0].image}'; }
wait_until "the new image downstream" is nginx:1.28-alpine image
fact "Deployment web image: nginx:1.27-alpine -> $(image) downstream ($(since "$t0"))"
t0=$(now_ms)
old_uid="$(dn get secret api-token -n demo -o jsonpath='{.metadata.uid}')"
token() { dn get secret api-token -n demo -o jsonpath='{.data.token}' | base64 -d; }
sed 's/s3cr3t-v1/s3cr3t-v2/' examples/demo/secret.yaml | up replace --force -f - >/dev/null
wait_until "the rotated Secret downstream" is s3cr3t-v2 token
fact "immutable Secret api-token replaced upstream: downstream token $(token), recreated (uid ${old_uid:0:8}… -> $(dn get secret api-token -n demo -o jsonpath='{.metadata.uid}' | cut -c1-8)…) ($(since "$t0"))"

# ---- 7. hot swap ----------------------------------------------------------------------------

step "Hot-swap a rule: an autoscaler owns the downstream replicas"
replicas() { dn get deployment web -n demo -o jsonpath='{.spec.replicas}'; }
t0=$(now_ms)
dn scale deployment web -n demo --replicas=5 >/dev/null
wait_until "downsync to put the replicas back" is 2 replicas
fact "downstream: kubectl scale web --replicas=5 -> downsync puts back $(replicas), the upstream value ($(since "$t0"))"
mkdir -p "$plugins/hpa-replicas.fixtures"
cp -r examples/plugins/hpa-replicas/fixtures/. "$plugins/hpa-replicas.fixtures/"
cp "$wasm/downsync_example_hpa_replicas.wasm" "$plugins/.hpa-replicas.wasm.tmp"
mv "$plugins/.hpa-replicas.wasm.tmp" "$plugins/hpa-replicas.wasm"
t0=$(now_ms)
fact "copied hpa-replicas.wasm (and its fixtures) into the plugins dir; downsync keeps running"
wait_until "downsync to load hpa-replicas" grep -q 'plugin version loaded plugin="hpa-replicas"' "$log"
wait_until "downsync to sync again with the new rules" grep -q 'rules changed; syncing' "$log"
grep -m1 'plugin version loaded plugin="hpa-replicas"' "$log" | sed -E 's/^[^ ]+ +INFO [^ ]+ /log: /; s/(digest=.{12})[0-9a-f]+/\1…/; s/ file=.*//' | sed 's/^/   /'
fact "loaded in $(since "$t0"), after checking it against its fixtures"
wait_until "the queue to drain" is 0 metric_sum downsync_queue_depth
sleep 1
before="$(metric_sum 'downsync_syncs_total{kind="Deployment"')"
dn scale deployment web -n demo --replicas=5 >/dev/null
wait_until "downsync to look at the scaled Deployment" above 'downsync_syncs_total{kind="Deployment"' "$before"
sleep 1
[[ "$(replicas)" == 5 ]] || die "downstream replicas are $(replicas), want 5 (hpa-replicas should keep them)"
fact "downstream: kubectl scale web --replicas=5 -> stays $(replicas): the live value wins now"
before="$(metric_sum 'downsync_syncs_total{kind="Deployment"')"
up scale deployment web -n demo --replicas=3 >/dev/null
wait_until "downsync to sync the upstream scale" above 'downsync_syncs_total{kind="Deployment"' "$before"
sleep 1
[[ "$(replicas)" == 5 ]] || die "downstream replicas are $(replicas), want 5"
fact "upstream: scale web to 3 -> downstream stays $(replicas)"
curl -fsS "http://$metrics/metrics" | { grep '^downsync_plugin_calls_total{plugin="hpa-replicas"' || echo "(no hpa-replicas calls counted)"; } | sed 's/^/   metrics: /'

# ---- 8. deletes -----------------------------------------------------------------------------

step "Delete upstream"
t0=$(now_ms)
up delete configmap feature-flags -n demo >/dev/null
wait_until "the ConfigMap to go downstream" is "" dn get configmap feature-flags -n demo --ignore-not-found -o name
fact "ConfigMap feature-flags deleted upstream -> gone downstream ($(since "$t0"))"
dn create configmap keep-me -n demo --from-literal=owner=ops >/dev/null
up create configmap keep-me -n demo --from-literal=owner=upstream >/dev/null
up label configmap keep-me -n demo "$selector" >/dev/null
fact "downstream: ConfigMap keep-me created by hand (owner=ops, no downsync stamp); upstream: a keep-me too"
conflicts() { up get events -n demo --field-selector reason=NameConflict,involvedObject.name=keep-me -o name; }
wait_until "the NameConflict event upstream" isnt "" conflicts
up get events -n demo --field-selector reason=NameConflict,involvedObject.name=keep-me --no-headers \
  -o custom-columns='TYPE:.type,REASON:.reason,OBJECT:.involvedObject.name,MESSAGE:.message' | awk 'NR == 1' | cut -c1-160 | sed 's/^/   upstream event: /'
stamp="$(dn get configmap keep-me -n demo -o jsonpath='{.metadata.labels.downsync\.dev/managed-by}')"
fact "downstream keep-me: owner=$(dn get configmap keep-me -n demo -o jsonpath='{.data.owner}'), managed-by label ${stamp:-none}: untouched"
t0=$(now_ms)
up delete -f examples/demo/ --ignore-not-found --wait=false >/dev/null
up delete configmap keep-me -n demo --ignore-not-found --wait=false >/dev/null
fact "upstream: kubectl delete -f examples/demo/ (namespace demo and the PV)"
wait_until "the downstream copies to go" is 0 owned_count
rest="$(dn get configmap,secret,service,deployment,pvc -n demo -o name | { grep -v kube-root-ca.crt || true; } | paste -sd' ')"
fact "downstream: every synced object is gone ($(since "$t0")); left in namespace demo: ${rest:-nothing}"

# ---- 9. stop --------------------------------------------------------------------------------

step "Stop downsync"
t0=$(now_ms)
kill -TERM "$ds_pid"
rc=0
wait "$ds_pid" || rc=$?
ds_pid=""
(( rc == 0 )) || die "downsync exited with status $rc after SIGTERM"
fact "SIGTERM -> downsync exited with status $rc in $(since "$t0") ($(tail -n 1 "$log" | sed -E 's/^[^ ]+ +//'))"
done=1

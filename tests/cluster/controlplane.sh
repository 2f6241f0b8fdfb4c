#!/usr/bin/env bash
# Starts and stops a local Kubernetes control plane (etcd + kube-apiserver +
# kube-controller-manager, by default with the garbage-collector and namespace controllers) for
# tests.
#
#   controlplane.sh up NAME [--owner-pid PID] [--api-port PORT] [--controllers LIST] [--audit]
#       Starts control plane NAME on free loopback ports, with its own data dir and PKI, waits
#       for /readyz, and prints the path of an admin kubeconfig (kube-rs and kubectl both read
#       it). With --owner-pid, a watchdog stops the control plane as soon as PID exits, so a
#       crashed or interrupted test run leaves nothing behind. --controllers is the
#       kube-controller-manager's comma-separated controller list (default
#       garbage-collector-controller,namespace-controller); for volume binding add
#       persistentvolume-binder-controller,persistentvolume-protection-controller,
#       persistentvolumeclaim-protection-controller. --audit turns on the apiserver's audit log
#       (level Metadata, writes only: create, update, patch, delete) in NAME/logs/audit.log,
#       one JSON event a line with the user agent of each writer.
#   controlplane.sh down NAME
#       Stops exactly the processes that `up NAME` started, by PID, and removes its data.
#   controlplane.sh status [NAME]
#       Lists running control planes.
#   controlplane.sh stop-apiserver NAME | start-apiserver NAME
#       Stops only the kube-apiserver of NAME (etcd and its data stay), or starts it again with
#       the same flags and port and waits for /readyz: an API server outage and its return.
#
# Environment: DOWNSYNC_CP_ROOT (default ${TMPDIR:-/tmp}/downsync-controlplanes) holds one
# folder per control plane. DOWNSYNC_CP_READY_TIMEOUT (default 180) is in seconds.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="${DOWNSYNC_CP_ROOT:-${TMPDIR:-/tmp}/downsync-controlplanes}"
tool=controlplane what="control plane" grace=50
# shellcheck source=tests/cluster/lib.sh
source "$here/lib.sh"
ready_timeout="${DOWNSYNC_CP_READY_TIMEOUT:-180}"

usage() { sed -n '2,26p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }

gen_pki() {
  local d="$1"
  (
    cd "$d"
    ec() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
    ec ca.key
    openssl req -x509 -new -key ca.key -days 3650 -subj "/CN=downsync-test-ca" -out ca.crt 2>/dev/null
    ec server.key
    openssl req -new -key server.key -subj "/CN=kube-apiserver" -out server.csr 2>/dev/null
    printf 'subjectAltName=DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,IP:127.0.0.1,IP:10.0.0.1\nextendedKeyUsage=serverAuth\n' > server.ext
    openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 -extfile server.ext -out server.crt 2>/dev/null
    ec admin.key
    openssl req -new -key admin.key -subj "/O=system:masters/CN=admin" -out admin.csr 2>/dev/null
    printf 'extendedKeyUsage=clientAuth\n' > admin.ext
    openssl x509 -req -in admin.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 -extfile admin.ext -out admin.crt 2>/dev/null
    ec sa.key
    openssl pkey -in sa.key -pubout -out sa.pub 2>/dev/null
    rm -f ./*.csr ./*.ext ca.srl
  ) || die "generating the PKI with openssl failed (is openssl installed? apt-get install openssl)"
}

write_kubeconfig() {
  local d="$1" port="$2" name="$3"
  cat > "$d/kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters:
- name: $name
  cluster:
    server: https://127.0.0.1:$port
    certificate-authority-data: $(base64 -w0 < "$d/pki/ca.crt")
users:
- name: $name-admin
  user:
    client-certificate-data: $(base64 -w0 < "$d/pki/admin.crt")
    client-key-data: $(base64 -w0 < "$d/pki/admin.key")
contexts:
- name: $name
  context:
    cluster: $name
    user: $name-admin
current-context: $name
KC
}

# Starts the kube-apiserver of control plane dir $1 (name $2) from its kept command, records its
# PID, and waits for /readyz; on failure says why and returns 1.
start_apiserver() {
  local dir="$1" name="$2" api_port api_pid cmd=()
  api_port="$(cat "$dir/api-port")"
  mapfile -d '' -t cmd < "$dir/apiserver-cmd"
  setsid "${cmd[@]}" >>"$dir/logs/kube-apiserver.log" 2>&1 < /dev/null &
  api_pid=$!
  sed -i '/^kube-apiserver=/d' "$dir/pids"
  echo "kube-apiserver=$api_pid" >> "$dir/pids"
  local deadline=$(( $(date +%s) + ready_timeout ))
  while (( $(date +%s) < deadline )); do
    if ! alive "$api_pid"; then
      show_log_tail "$dir/logs/kube-apiserver.log" kube-apiserver
      if grep -q "address already in use" "$dir/logs/kube-apiserver.log"; then
        echo "controlplane: error: port $api_port was taken while the apiserver started; run again (or pass --api-port)" >&2
      else
        show_log_tail "$dir/logs/etcd.log" etcd
        echo "controlplane: error: kube-apiserver for '$name' exited before it became ready (log above)" >&2
      fi
      return 1
    fi
    if curl -fsS --max-time 2 --cacert "$dir/pki/ca.crt" --cert "$dir/pki/admin.crt" --key "$dir/pki/admin.key" \
         "https://127.0.0.1:$api_port/readyz" >/dev/null 2>&1; then
      return 0
    fi
    sleep 0.25
  done
  show_log_tail "$dir/logs/kube-apiserver.log" kube-apiserver
  echo "controlplane: error: kube-apiserver for '$name' was not ready after ${ready_timeout}s (log above; raise DOWNSYNC_CP_READY_TIMEOUT on a slow machine)" >&2
  return 1
}

cmd_stop_apiserver() {
  local name="$1" dir="$root/$1" pid
  [[ -f "$dir/pids" ]] || die "no control plane '$name'"
  pid="$(grep '^kube-apiserver=' "$dir/pids" | cut -d= -f2 || true)"
  stop_pids "$dir" "$pid"
  log "kube-apiserver of '$name' stopped (etcd keeps its data)"
}

cmd_start_apiserver() {
  local name="$1" dir="$root/$1" pid
  [[ -f "$dir/apiserver-cmd" ]] || die "no control plane '$name' (or one started by an older controlplane.sh)"
  pid="$(grep '^kube-apiserver=' "$dir/pids" | cut -d= -f2 || true)"
  alive "$pid" && die "the kube-apiserver of '$name' is running (PID $pid)"
  start_apiserver "$dir" "$name" || exit 1
  log "kube-apiserver of '$name' ready again: https://127.0.0.1:$(cat "$dir/api-port")"
}

cmd_up() {
  local name="$1"; shift
  local owner="" api_port="" controllers="garbage-collector-controller,namespace-controller" audit=0
  while (( $# )); do
    case "$1" in
      --owner-pid) owner="${2:?--owner-pid needs a PID}"; shift 2 ;;
      --api-port) api_port="${2:?--api-port needs a port}"; shift 2 ;;
      --controllers) controllers="${2:?--controllers needs a comma-separated list}"; shift 2 ;;
      --audit) audit=1; shift ;;
      *) usage ;;
    esac
  done
  [[ "$name" =~ ^[a-zA-Z0-9_-]+$ ]] || die "control plane name '$name' must be letters, digits, '-' or '_'"
  # Checked here, not left to kube-controller-manager: it would exit after the apiserver is up,
  # in the background, and `up` would report a control plane that lacks its controllers.
  [[ "$controllers" =~ ^-?[a-z*-]+(,-?[a-z*-]+)*$ ]] \
    || die "--controllers '$controllers' must be comma-separated controller names (see kube-controller-manager --help)"
  local dir="$root/$name"
  if [[ -f "$dir/pids" ]]; then
    local p; p="$(grep '^kube-apiserver=' "$dir/pids" | cut -d= -f2 || true)"
    if alive "$p"; then die "control plane '$name' is already running (apiserver PID $p); stop it first: $0 down $name"; fi
    cmd_down "$name" >/dev/null 2>&1 || true
  fi
  for cmd in openssl curl ss base64; do
    command -v "$cmd" >/dev/null 2>&1 || die "'$cmd' is missing; install it (Debian: apt-get install openssl curl iproute2 coreutils)"
  done

  local bin; bin="$("$here/build.sh" | tail -n 1)"
  [[ -x "$bin/kube-apiserver" ]] || die "control plane binaries not found in '$bin'"
  # Every name must be one this kube-controller-manager knows: a typo would otherwise only
  # show up later as a controller that silently never runs (or a manager that exits).
  local known c list
  known=",$("$bin/kube-controller-manager" --help 2>&1 | sed -n 's/^ *All controllers: //p' | tr -d ' '),"
  [[ "$known" != ",," ]] || die "could not read the controller names from kube-controller-manager --help"
  IFS=, read -ra list <<< "$controllers"  # not an unquoted expansion: '*' would be globbed
  for c in "${list[@]}"; do
    c="${c#-}"
    [[ "$c" == "*" || "$known" == *",$c,"* ]] \
      || die "--controllers: unknown controller '$c'; known: ${known:1:-1}"
  done

  if [[ -n "$api_port" ]]; then
    port_in_use "$api_port" && die "port $api_port is already taken: $(ss -Htlnp "sport = :$api_port" | head -n1). Pick another --api-port or stop what listens there."
  else
    api_port="$(free_port)"
  fi
  local etcd_port peer_port
  etcd_port="$(free_port)"; peer_port="$(free_port)"
  while [[ "$etcd_port" == "$api_port" || "$peer_port" == "$api_port" || "$peer_port" == "$etcd_port" ]]; do
    etcd_port="$(free_port)"; peer_port="$(free_port)"
  done

  mkdir -p "$dir/pki" "$dir/etcd" "$dir/logs"
  chmod 700 "$dir/etcd" "$dir/pki"
  : > "$dir/pids"
  # From here on, any failure stops what was started and removes the data.
  trap 'cmd_down "$name" >/dev/null 2>&1' ERR
  gen_pki "$dir/pki"
  write_kubeconfig "$dir" "$api_port" "$name"
  echo "$api_port" > "$dir/api-port"

  local audit_flags=()
  if (( audit )); then
    # Who wrote what: Metadata (no bodies) for writes, nothing for reads and watches, which
    # would swamp the file. Only the ResponseComplete stage, so each write is one line.
    cat > "$dir/audit-policy.yaml" <<'POLICY'
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived", "ResponseStarted"]
rules:
- level: Metadata
  verbs: ["create", "update", "patch", "delete", "deletecollection"]
- level: None
POLICY
    audit_flags=(--audit-policy-file "$dir/audit-policy.yaml" --audit-log-path "$dir/logs/audit.log"
      --audit-log-format json --audit-log-mode blocking --audit-log-maxsize 0)
  fi

  local t0; t0=$(date +%s%N)
  setsid "$bin/etcd" --data-dir "$dir/etcd" \
    --listen-client-url "http://127.0.0.1:$etcd_port" --listen-peer-url "http://127.0.0.1:$peer_port" \
    >"$dir/logs/etcd.log" 2>&1 < /dev/null &
  echo "etcd=$!" >> "$dir/pids"

  # Kept, so that start-apiserver runs it again as it was.
  local api_cmd=("$bin/kube-apiserver"
    --etcd-servers "http://127.0.0.1:$etcd_port"
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$api_port"
    --endpoint-reconciler-type none
    --tls-cert-file "$dir/pki/server.crt" --tls-private-key-file "$dir/pki/server.key"
    --client-ca-file "$dir/pki/ca.crt"
    --service-account-issuer "https://127.0.0.1:$api_port/"
    --service-account-key-file "$dir/pki/sa.pub" --service-account-signing-key-file "$dir/pki/sa.key"
    --service-cluster-ip-range 10.0.0.0/16 --service-node-port-range 30000-32767
    --authorization-mode RBAC --disable-admission-plugins ServiceAccount --allow-privileged=true
    "${audit_flags[@]}")
  printf '%s\0' "${api_cmd[@]}" > "$dir/apiserver-cmd"
  if ! start_apiserver "$dir" "$name"; then
    cmd_down "$name" >/dev/null 2>&1; trap - ERR
    exit 1
  fi
  local ready_ms=$(( ($(date +%s%N) - t0) / 1000000 ))

  setsid "$bin/kube-controller-manager" \
    --kubeconfig "$dir/kubeconfig" \
    --controllers "$controllers" \
    --leader-elect=false --bind-address 127.0.0.1 --secure-port 0 \
    --concurrent-gc-syncs 5 \
    >"$dir/logs/kube-controller-manager.log" 2>&1 < /dev/null &
  echo "kube-controller-manager=$!" >> "$dir/pids"

  [[ -z "$owner" ]] || start_watchdog "$here/controlplane.sh" "$name" "$dir" "$owner"
  trap - ERR
  echo "$ready_ms" > "$dir/ready-ms"
  log "control plane '$name' ready in ${ready_ms} ms: https://127.0.0.1:$api_port (logs in $dir/logs)"
  echo "$dir/kubeconfig"
}

cmd_status() {
  local d
  for d in "$root"/*/; do
    [[ -f "$d/pids" ]] || continue
    if [[ -z "${1:-}" || "$(basename "$d")" == "$1" ]]; then
      echo "$(basename "$d") https://127.0.0.1:$(cat "$d/api-port" 2>/dev/null) $d/kubeconfig"
    fi
  done
}

case "${1:-}" in
  up) [[ $# -ge 2 ]] || usage; shift; cmd_up "$@" ;;
  down) [[ $# -ge 2 ]] || usage; if [[ "${3:-}" == "--from-watchdog" ]]; then cmd_down "$2" self; else cmd_down "$2"; fi ;;
  status) cmd_status "${2:-}" ;;
  stop-apiserver) [[ $# -ge 2 ]] || usage; cmd_stop_apiserver "$2" ;;
  start-apiserver) [[ $# -ge 2 ]] || usage; cmd_start_apiserver "$2" ;;
  *) usage ;;
esac

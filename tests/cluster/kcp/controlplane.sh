#!/usr/bin/env bash
# Starts and stops a local kcp (v0.26.0, from build.sh beside this file) with its embedded etcd,
# on loopback, for the kcp tests and the demo.
#
#   kcp/controlplane.sh up NAME [--owner-pid PID]
#       Starts kcp NAME on free loopback ports with its own root directory, waits until the root
#       workspace answers, and prints the path of an admin kubeconfig whose current context is
#       the root workspace (https://127.0.0.1:PORT/clusters/root). Workspaces are
#       tenancy.kcp.io/v1alpha1 Workspace objects created there; a workspace's own URL is
#       .../clusters/root:<name>. With --owner-pid, a watchdog stops kcp as soon as PID exits.
#   kcp/controlplane.sh down NAME
#       Stops exactly the processes that `up NAME` started, by PID, and removes its data.
#   kcp/controlplane.sh status [NAME]
#       Lists running kcp instances.
#
# Environment: DOWNSYNC_CP_ROOT (default ${TMPDIR:-/tmp}/downsync-controlplanes) holds one
# folder per control plane, shared with ../controlplane.sh. DOWNSYNC_CP_READY_TIMEOUT (default
# 180) is in seconds.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="${DOWNSYNC_CP_ROOT:-${TMPDIR:-/tmp}/downsync-controlplanes}"
tool=kcp-controlplane what="kcp" grace=150
# shellcheck source=tests/cluster/lib.sh
source "$here/../lib.sh"
ready_timeout="${DOWNSYNC_CP_READY_TIMEOUT:-180}"

usage() { sed -n '2,19p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }

cmd_up() {
  local name="$1"; shift
  local owner=""
  while (( $# )); do
    case "$1" in
      --owner-pid) owner="${2:?--owner-pid needs a PID}"; shift 2 ;;
      *) usage ;;
    esac
  done
  [[ "$name" =~ ^[a-zA-Z0-9_-]+$ ]] || die "kcp name '$name' must be letters, digits, '-' or '_'"
  local dir="$root/$name"
  if [[ -f "$dir/pids" ]]; then
    local p; p="$(grep '^kcp=' "$dir/pids" | cut -d= -f2 || true)"
    if alive "$p"; then die "kcp '$name' is already running (PID $p); stop it first: $0 down $name"; fi
    cmd_down "$name" >/dev/null 2>&1 || true
  fi
  for cmd in curl ss; do
    command -v "$cmd" >/dev/null 2>&1 || die "'$cmd' is missing; install it (Debian: apt-get install curl iproute2)"
  done
  local bin; bin="$("$here/build.sh" | tail -n 1)"
  [[ -x "$bin/kcp" ]] || die "the kcp binary was not found in '$bin'"

  local port etcd_port peer_port
  port="$(free_port)"; etcd_port="$(free_port)"; peer_port="$(free_port)"
  while [[ "$etcd_port" == "$port" || "$peer_port" == "$port" || "$peer_port" == "$etcd_port" ]]; do
    etcd_port="$(free_port)"; peer_port="$(free_port)"
  done
  mkdir -p "$dir/kcp" "$dir/logs"
  chmod 700 "$dir/kcp"
  : > "$dir/pids"
  trap 'cmd_down "$name" >/dev/null 2>&1' ERR

  # Binding to 127.0.0.1 alone is not enough: kcp names its external and shard URLs after the
  # machine's other address unless told, and the kubeconfigs it writes would point there.
  local t0; t0=$(date +%s%N)
  setsid "$bin/kcp" start --root-directory "$dir/kcp" \
    --bind-address 127.0.0.1 --secure-port "$port" \
    --embedded-etcd-client-port "$etcd_port" --embedded-etcd-peer-port "$peer_port" \
    --external-hostname 127.0.0.1 \
    --shard-base-url "https://127.0.0.1:$port" --shard-external-url "https://127.0.0.1:$port" \
    >"$dir/logs/kcp.log" 2>&1 < /dev/null &
  local pid=$!
  echo "kcp=$pid" >> "$dir/pids"
  echo "$port" > "$dir/port"

  # Ready when the root workspace serves its Workspace objects to the admin: kcp has written its
  # admin kubeconfig by then and finished bootstrapping root.
  local admin="$dir/kcp/admin.kubeconfig" token deadline=$(( $(date +%s) + ready_timeout ))
  while :; do
    if ! alive "$pid"; then
      show_log_tail "$dir/logs/kcp.log"
      if grep -q "address already in use" "$dir/logs/kcp.log"; then
        echo "kcp-controlplane: error: a port was taken while kcp started; run again" >&2
      else
        echo "kcp-controlplane: error: kcp '$name' exited before it became ready (log above)" >&2
      fi
      cmd_down "$name" >/dev/null 2>&1; trap - ERR; exit 1
    fi
    if [[ -f "$admin" ]]; then
      token="$(sed -n 's/^ *token: *//p' "$admin" | head -n 1)"
      if [[ -n "$token" ]] && curl -fsS --max-time 2 -k -H "Authorization: Bearer $token" \
           "https://127.0.0.1:$port/clusters/root/apis/tenancy.kcp.io/v1alpha1/workspaces" >/dev/null 2>&1; then
        break
      fi
    fi
    if (( $(date +%s) >= deadline )); then
      show_log_tail "$dir/logs/kcp.log"
      echo "kcp-controlplane: error: kcp '$name' was not ready after ${ready_timeout}s (log above; raise DOWNSYNC_CP_READY_TIMEOUT on a slow machine)" >&2
      cmd_down "$name" >/dev/null 2>&1; trap - ERR; exit 1
    fi
    sleep 0.5
  done
  local ready_ms=$(( ($(date +%s%N) - t0) / 1000000 ))

  # kcp's admin kubeconfig, with the root workspace as its current context.
  sed 's/^current-context: .*/current-context: root/' "$admin" > "$dir/kubeconfig"
  chmod 600 "$dir/kubeconfig"

  [[ -z "$owner" ]] || start_watchdog "$here/controlplane.sh" "$name" "$dir" "$owner"
  trap - ERR
  echo "$ready_ms" > "$dir/ready-ms"
  log "kcp '$name' ready in ${ready_ms} ms: https://127.0.0.1:$port/clusters/root (logs in $dir/logs)"
  echo "$dir/kubeconfig"
}

cmd_status() {
  local d
  for d in "$root"/*/; do
    [[ -f "$d/pids" && -f "$d/port" ]] || continue
    grep -q '^kcp=' "$d/pids" || continue
    if [[ -z "${1:-}" || "$(basename "$d")" == "$1" ]]; then
      echo "$(basename "$d") https://127.0.0.1:$(cat "$d/port")/clusters/root $d/kubeconfig"
    fi
  done
}

case "${1:-}" in
  up) [[ $# -ge 2 ]] || usage; shift; cmd_up "$@" ;;
  down) [[ $# -ge 2 ]] || usage; if [[ "${3:-}" == "--from-watchdog" ]]; then cmd_down "$2" self; else cmd_down "$2"; fi ;;
  status) cmd_status "${2:-}" ;;
  *) usage ;;
esac

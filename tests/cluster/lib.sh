# Shared by the scripts that start local test servers (controlplane.sh, kcp/controlplane.sh,
# registry/registry.sh): messages, free ports, stopping only our own processes, `down`, and the
# watchdog that stops a server when its owner exits. Sourced after the script sets:
#   tool   the prefix of its messages (controlplane, kcp-controlplane, registry)
#   what   what one instance is called in messages (control plane, kcp, registry)
#   root   the folder holding one sub-folder per running instance
#   grace  tenths of a second a TERMed process gets before KILL

die() { echo "$tool: error: $*" >&2; exit 1; }
log() { echo "$tool: $*" >&2; }

port_in_use() { [[ -n "$(ss -Htln "sport = :$1" 2>/dev/null)" ]]; }

free_port() {
  local p i
  for i in $(seq 1 200); do
    p=$(( 20000 + RANDOM % 30000 ))
    port_in_use "$p" || { echo "$p"; return 0; }
  done
  die "no free loopback port found after 200 tries"
}

alive() { [[ -n "${1:-}" ]] && kill -0 "$1" 2>/dev/null; }

# A PID is ours only if it still runs with our instance's folder on its command line (the
# servers, the watchdog): never signal a reused PID.
ours() {
  local pid="$1" dir="$2" cmd
  cmd="$(tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null || true)"
  [[ "$cmd" == *"$dir"* ]]
}

stop_pids() {
  local dir="$1"; shift
  local pid waited
  for pid in "$@"; do
    alive "$pid" && ours "$pid" "$dir" && kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "$@"; do
    waited=0
    while alive "$pid" && (( waited < grace )); do sleep 0.1; waited=$(( waited + 1 )); done
    if alive "$pid" && ours "$pid" "$dir"; then kill -KILL "$pid" 2>/dev/null || true; fi
  done
}

# Stops instance $1, its processes in reverse start order (the watchdog last, or not at all
# when $2 says the watchdog itself is calling), and removes its folder.
cmd_down() {
  local name="$1" dir="$root/$1" pids=() line self="${2:-}"
  [[ -d "$dir" ]] || { log "$what '$name' is not running (no $dir)"; return 0; }
  if [[ -f "$dir/pids" ]]; then
    while read -r line; do
      [[ "$line" == watchdog=* && -n "$self" ]] && continue
      pids=("${line#*=}" "${pids[@]}")
    done < "$dir/pids"
  fi
  stop_pids "$dir" "${pids[@]}"
  rm -rf "$dir"
  log "$what '$name' stopped"
}

show_log_tail() {
  echo "---- last 25 lines of $1 ----" >&2
  tail -n 25 "$1" >&2 || true
  echo "----" >&2
}

# Stops instance $2 (folder $3) with script $1 as soon as PID $4 exits, or when its folder goes.
start_watchdog() {
  local script="$1" name="$2" dir="$3" owner="$4"
  setsid bash -c 'while kill -0 "$1" 2>/dev/null && [[ -d "$3" ]]; do sleep 1; done; exec "$2" down "$4" --from-watchdog' \
    "$tool-watchdog" "$owner" "$script" "$dir" "$name" >/dev/null 2>&1 < /dev/null &
  echo "watchdog=$!" >> "$dir/pids"
}

#!/usr/bin/env bash
# Starts and stops a local OCI registry (the CNCF Distribution registry, from build.sh beside
# this file) on loopback, for the registry tests (OCI plugin sources, cosign signatures).
#
#   registry/registry.sh up NAME [--insecure] [--owner-pid PID]
#       Starts registry NAME on a free loopback port with its own state directory: TLS with a
#       test CA made for it (server certificate for 127.0.0.1 and localhost), htpasswd auth with
#       a generated user and password, filesystem storage, deletes enabled. Waits until GET /v2/
#       answers (401 without credentials, 200 with them) and prints the path of an env file of
#       KEY=VALUE lines (values unquoted, no spaces; `source` it or split at the first '='):
#         DOWNSYNC_REGISTRY_NAME       NAME
#         DOWNSYNC_REGISTRY_ADDR       127.0.0.1:PORT, the registry part of image references
#         DOWNSYNC_REGISTRY_URL        https://127.0.0.1:PORT (http:// with --insecure)
#         DOWNSYNC_REGISTRY_INSECURE   0, or 1 with --insecure
#         DOWNSYNC_REGISTRY_CA         the test CA certificate (PEM) to trust; empty if --insecure
#         DOWNSYNC_REGISTRY_USER       the user; empty if --insecure
#         DOWNSYNC_REGISTRY_PASSWORD   its password; empty if --insecure
#         DOWNSYNC_REGISTRY_DOCKER_CONFIG      a docker config.json for it, the shape of an image
#                                      pull Secret's .dockerconfigjson: {"auths":{"ADDR":{"auth":
#                                      "base64(USER:PASSWORD)"}}} ({"auths":{}} if --insecure)
#         DOWNSYNC_REGISTRY_DOCKER_CONFIG_DIR  the folder holding it, for DOCKER_CONFIG=...
#         DOWNSYNC_REGISTRY_DIR        the state directory (storage in DIR/data, log in DIR/logs)
#       With --insecure: plain HTTP and no auth. With --owner-pid, a watchdog stops the registry
#       as soon as PID exits.
#   registry/registry.sh down NAME
#       Stops exactly the processes that `up NAME` started, by PID, and removes its data.
#   registry/registry.sh status [NAME]
#       Lists running registries: NAME URL ENV-FILE.
#
# Environment: DOWNSYNC_REGISTRY_ROOT (default ${TMPDIR:-/tmp}/downsync-registries) holds one
# folder per registry. DOWNSYNC_REGISTRY_READY_TIMEOUT (default 60) is in seconds.
# DOWNSYNC_REGISTRY_BIN, if set, is the folder of build.sh's binaries (as tests/run.sh exports
# it); otherwise build.sh is run (cached).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="${DOWNSYNC_REGISTRY_ROOT:-${TMPDIR:-/tmp}/downsync-registries}"
tool=registry what="registry" grace=100
# shellcheck source=tests/cluster/lib.sh
source "$here/../lib.sh"
ready_timeout="${DOWNSYNC_REGISTRY_READY_TIMEOUT:-60}"

usage() { sed -n '2,33p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }

# The test CA and the registry's server certificate (EC P-256; SANs 127.0.0.1 and localhost).
make_tls() {
  local d="$1" log="$1/../logs/openssl.log"
  {
    openssl ecparam -name prime256v1 -genkey -noout -out "$d/ca.key" &&
    openssl req -x509 -new -key "$d/ca.key" -sha256 -days 30 -subj "/CN=downsync test registry CA" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
      -out "$d/ca.crt" &&
    openssl ecparam -name prime256v1 -genkey -noout -out "$d/server.key" &&
    openssl req -new -key "$d/server.key" -subj "/CN=127.0.0.1" -out "$d/server.csr" &&
    printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature" \
      "extendedKeyUsage=serverAuth" "subjectAltName=IP:127.0.0.1,DNS:localhost" \
      "subjectKeyIdentifier=hash" "authorityKeyIdentifier=keyid:always" > "$d/server.ext" &&
    openssl x509 -req -in "$d/server.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial \
      -sha256 -days 30 -extfile "$d/server.ext" -out "$d/server.crt"
  } >"$log" 2>&1 || { cat "$log" >&2; echo "registry: error: openssl could not make the test CA and server certificate (output above)" >&2; return 1; }
  chmod 600 "$d/ca.key" "$d/server.key"
}

cmd_up() {
  local name="$1"; shift
  local owner="" insecure=0
  while (( $# )); do
    case "$1" in
      --owner-pid) owner="${2:?--owner-pid needs a PID}"; shift 2 ;;
      --insecure) insecure=1; shift ;;
      *) usage ;;
    esac
  done
  [[ "$name" =~ ^[a-zA-Z0-9_-]+$ ]] || die "registry name '$name' must be letters, digits, '-' or '_'"
  [[ "$root" =~ ^[A-Za-z0-9_./+-]+$ ]] || die "the state root '$root' has characters the env file cannot hold unquoted; set DOWNSYNC_REGISTRY_ROOT to a plain path"
  local dir="$root/$name"
  if [[ -f "$dir/pids" ]]; then
    local p; p="$(grep '^registry=' "$dir/pids" | cut -d= -f2 || true)"
    if alive "$p"; then die "registry '$name' is already running (PID $p); stop it first: $0 down $name"; fi
    cmd_down "$name" >/dev/null 2>&1 || true
  fi
  for cmd in curl ss openssl base64; do
    command -v "$cmd" >/dev/null 2>&1 || die "'$cmd' is missing; install it (Debian: apt-get install curl iproute2 openssl coreutils)"
  done
  local bin="${DOWNSYNC_REGISTRY_BIN:-}"
  [[ -n "$bin" ]] || bin="$("$here/build.sh" | tail -n 1)"
  [[ -x "$bin/registry" && -x "$bin/htpasswd" ]] || die "the registry and htpasswd binaries were not found in '$bin'${DOWNSYNC_REGISTRY_BIN:+ (DOWNSYNC_REGISTRY_BIN)}"

  local port; port="$(free_port)"
  local addr="127.0.0.1:$port"
  mkdir -p "$dir/data" "$dir/logs" "$dir/tls" "$dir/docker"
  chmod 700 "$dir"
  : > "$dir/pids"
  trap 'cmd_down "$name" >/dev/null 2>&1' ERR

  local user="" password="" ca="" scheme="http" tls_yaml="" auth_yaml=""
  if (( ! insecure )); then
    scheme="https"
    make_tls "$dir/tls"
    ca="$dir/tls/ca.crt"
    user="downsync-$(openssl rand -hex 3)"
    password="$(openssl rand -hex 16)"
    printf '%s\n' "$password" | "$bin/htpasswd" "$user" > "$dir/htpasswd" || { echo "registry: error: htpasswd could not hash the password" >&2; false; }
    tls_yaml="  tls:
    certificate: $dir/tls/server.crt
    key: $dir/tls/server.key"
    auth_yaml="auth:
  htpasswd:
    realm: downsync-test-registry
    path: $dir/htpasswd"
    printf '{"auths":{"%s":{"auth":"%s"}}}\n' "$addr" "$(printf '%s:%s' "$user" "$password" | base64 -w0)" > "$dir/docker/config.json"
  else
    echo '{"auths":{}}' > "$dir/docker/config.json"
  fi
  chmod 600 "$dir/docker/config.json"

  cat > "$dir/config.yml" <<YAML
version: 0.1
log:
  level: info
  formatter: text
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: $dir/data
  delete:
    enabled: true
  cache:
    blobdescriptor: inmemory
http:
  addr: $addr
  secret: $(openssl rand -hex 16)
$tls_yaml
$auth_yaml
YAML

  # REGISTRY_* variables would override the config file: the registry sees none of ours. No
  # traces are exported (by default it sends them to localhost:4318).
  local unset=() v
  for v in $(compgen -e); do [[ "$v" == REGISTRY_* ]] && unset+=(-u "$v"); done
  local t0; t0=$(date +%s%N)
  setsid env "${unset[@]}" OTEL_TRACES_EXPORTER=none "$bin/registry" serve "$dir/config.yml" \
    >"$dir/logs/registry.log" 2>&1 < /dev/null &
  local pid=$!
  echo "registry=$pid" >> "$dir/pids"
  echo "$port" > "$dir/port"

  # Ready when /v2/ refuses us without credentials and lets us in with them (or, insecure,
  # simply answers 200).
  local curl_tls=() code deadline=$(( $(date +%s) + ready_timeout ))
  [[ -n "$ca" ]] && curl_tls=(--cacert "$ca")
  while :; do
    if ! alive "$pid"; then
      show_log_tail "$dir/logs/registry.log"
      if grep -q "address already in use" "$dir/logs/registry.log"; then
        echo "registry: error: port $port was taken while the registry started; run again" >&2
      else
        echo "registry: error: registry '$name' exited before it became ready (log above)" >&2
      fi
      cmd_down "$name" >/dev/null 2>&1; trap - ERR; exit 1
    fi
    code="$(curl -sS --max-time 2 "${curl_tls[@]}" -o /dev/null -w '%{http_code}' "$scheme://$addr/v2/" 2>/dev/null || true)"
    if (( insecure )) && [[ "$code" == 200 ]]; then break; fi
    if (( ! insecure )) && [[ "$code" == 401 ]]; then
      code="$(curl -sS --max-time 2 "${curl_tls[@]}" -u "$user:$password" -o /dev/null -w '%{http_code}' "$scheme://$addr/v2/" 2>/dev/null || true)"
      [[ "$code" == 200 ]] && break
      show_log_tail "$dir/logs/registry.log"
      echo "registry: error: registry '$name' answers, but refuses the generated credentials (HTTP $code)" >&2
      cmd_down "$name" >/dev/null 2>&1; trap - ERR; exit 1
    fi
    if (( $(date +%s) >= deadline )); then
      show_log_tail "$dir/logs/registry.log"
      echo "registry: error: registry '$name' was not ready after ${ready_timeout}s (last answer to GET /v2/: '${code:-none}'; log above; raise DOWNSYNC_REGISTRY_READY_TIMEOUT on a slow machine)" >&2
      cmd_down "$name" >/dev/null 2>&1; trap - ERR; exit 1
    fi
    sleep 0.1
  done
  local ready_ms=$(( ($(date +%s%N) - t0) / 1000000 ))

  cat > "$dir/env" <<ENV
DOWNSYNC_REGISTRY_NAME=$name
DOWNSYNC_REGISTRY_ADDR=$addr
DOWNSYNC_REGISTRY_URL=$scheme://$addr
DOWNSYNC_REGISTRY_INSECURE=$insecure
DOWNSYNC_REGISTRY_CA=$ca
DOWNSYNC_REGISTRY_USER=$user
DOWNSYNC_REGISTRY_PASSWORD=$password
DOWNSYNC_REGISTRY_DOCKER_CONFIG=$dir/docker/config.json
DOWNSYNC_REGISTRY_DOCKER_CONFIG_DIR=$dir/docker
DOWNSYNC_REGISTRY_DIR=$dir
ENV
  chmod 600 "$dir/env"

  [[ -z "$owner" ]] || start_watchdog "$here/registry.sh" "$name" "$dir" "$owner"
  trap - ERR
  echo "$ready_ms" > "$dir/ready-ms"
  log "registry '$name' ready in ${ready_ms} ms: $scheme://$addr (logs in $dir/logs)"
  echo "$dir/env"
}

cmd_status() {
  local d url
  for d in "$root"/*/; do
    [[ -f "$d/pids" && -f "$d/env" ]] || continue
    grep -q '^registry=' "$d/pids" || continue
    if [[ -z "${1:-}" || "$(basename "$d")" == "$1" ]]; then
      url="$(sed -n 's/^DOWNSYNC_REGISTRY_URL=//p' "$d/env")"
      echo "$(basename "$d") $url ${d%/}/env"
    fi
  done
}

case "${1:-}" in
  up) [[ $# -ge 2 ]] || usage; shift; cmd_up "$@" ;;
  down) [[ $# -ge 2 ]] || usage; if [[ "${3:-}" == "--from-watchdog" ]]; then cmd_down "$2" self; else cmd_down "$2"; fi ;;
  status) cmd_status "${2:-}" ;;
  *) usage ;;
esac

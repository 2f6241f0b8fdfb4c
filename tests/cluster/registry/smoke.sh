#!/usr/bin/env bash
# End-to-end check of the registry tooling, and the reference for how the tests drive it:
# starts a registry (registry.sh), pushes an artifact with cosign, signs it with a generated key
# pair (no transparency log: all offline), verifies it, and checks that the signature is in the
# legacy cosign layout the Rust side reads (tag sha256-<hex>.sig, one
# application/vnd.dev.cosign.simplesigning.v1+json layer carrying the
# dev.cosignproject.cosign/signature annotation). Then checks the plain-HTTP --insecure mode.
#
#   registry/smoke.sh        prints the signature manifest and "smoke: ok" on success
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
die() { echo "smoke: error: $*" >&2; exit 1; }

bin="${DOWNSYNC_REGISTRY_BIN:-$("$here/build.sh" | tail -n 1)}"
export DOWNSYNC_REGISTRY_BIN="$bin"
name="smoke-$$"
work="$(mktemp -d)"
trap '"$here/registry.sh" down "$name" >/dev/null 2>&1 || true; "$here/registry.sh" down "$name-http" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT

# shellcheck disable=SC1090
source "$("$here/registry.sh" up "$name" --owner-pid $$ | tail -n 1)"
cd "$work"
# cosign finds the credentials in $DOCKER_CONFIG/config.json and trusts the test CA through
# SSL_CERT_FILE (or: --registry-cacert FILE --registry-username U --registry-password P).
export DOCKER_CONFIG="$DOWNSYNC_REGISTRY_DOCKER_CONFIG_DIR" SSL_CERT_FILE="$DOWNSYNC_REGISTRY_CA"
export COSIGN_PASSWORD="smoke-test" HOME="$work"
cosign="$bin/cosign"

"$cosign" generate-key-pair >/dev/null 2>&1 || die "cosign generate-key-pair failed"
printf '\0asm\x01\0\0\0' > plugin.wasm
out="$("$cosign" upload wasm -f plugin.wasm "$DOWNSYNC_REGISTRY_ADDR/smoke/plugin:v1" 2>&1)" || { echo "$out" >&2; die "cosign upload wasm failed"; }
curl_auth=(--cacert "$DOWNSYNC_REGISTRY_CA" -u "$DOWNSYNC_REGISTRY_USER:$DOWNSYNC_REGISTRY_PASSWORD")
digest="$(curl -fsS "${curl_auth[@]}" -o /dev/null -w '%header{docker-content-digest}' \
  -H 'Accept: application/vnd.oci.image.manifest.v1+json' "$DOWNSYNC_REGISTRY_URL/v2/smoke/plugin/manifests/v1")"
[[ "$digest" == sha256:* ]] || die "no digest for smoke/plugin:v1 (got '$digest')"
ref="$DOWNSYNC_REGISTRY_ADDR/smoke/plugin@$digest"

out="$("$cosign" sign --key cosign.key --tlog-upload=false --yes "$ref" 2>&1)" || { echo "$out" >&2; die "cosign sign failed"; }
# An empty trusted root keeps verify from asking Sigstore's TUF repository (network) for one.
echo '{"mediaType":"application/vnd.dev.sigstore.trustedroot+json;version=0.1"}' > trusted-root.json
out="$("$cosign" verify --key cosign.pub --insecure-ignore-tlog=true --trusted-root trusted-root.json "$ref" 2>&1)" || { echo "$out" >&2; die "cosign verify failed"; }
"$cosign" generate-key-pair --output-key-prefix other >/dev/null 2>&1
if "$cosign" verify --key other.pub --insecure-ignore-tlog=true --trusted-root trusted-root.json "$ref" >/dev/null 2>&1; then
  die "cosign verify accepted a signature against the wrong key"
fi

manifest="$(curl -fsS "${curl_auth[@]}" -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
  "$DOWNSYNC_REGISTRY_URL/v2/smoke/plugin/manifests/sha256-${digest#sha256:}.sig")" || die "no legacy signature tag sha256-${digest#sha256:}.sig"
echo "$manifest"
python3 - "$manifest" <<'PY' || die "the signature manifest is not in the legacy cosign layout"
import json, sys
m = json.loads(sys.argv[1])
(layer,) = m["layers"]
assert layer["mediaType"] == "application/vnd.dev.cosign.simplesigning.v1+json", layer
assert layer["annotations"]["dev.cosignproject.cosign/signature"], layer
PY

# Plain HTTP, no auth.
# shellcheck disable=SC1090
source "$("$here/registry.sh" up "$name-http" --insecure --owner-pid $$ | tail -n 1)"
[[ "$(curl -sS -o /dev/null -w '%{http_code}' "$DOWNSYNC_REGISTRY_URL/v2/")" == 200 ]] || die "the --insecure registry does not answer 200 on /v2/"
out="$(env -u SSL_CERT_FILE DOCKER_CONFIG="$DOWNSYNC_REGISTRY_DOCKER_CONFIG_DIR" "$cosign" upload wasm --allow-http-registry -f plugin.wasm "$DOWNSYNC_REGISTRY_ADDR/smoke/plugin:v1" 2>&1)" || { echo "$out" >&2; die "cosign upload to the --insecure registry failed"; }
echo "smoke: ok" >&2

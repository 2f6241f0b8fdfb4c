#!/usr/bin/env bash
# The guest toolchains for plugins written in Python and JavaScript, and the example components
# built with them.
#
#   tests/guest-toolchains.sh          install (once), build the examples (once per input), and
#                                      print `export NAME=VALUE` lines for tests/run.sh to eval
#   tests/guest-toolchains.sh build python|js SRC_DIR OUT.wasm
#                                      build one plugin folder with the pinned toolchain
#
# Pinned: componentize-py 0.25.1 (PyPI) and @bytecodealliance/jco 1.35.0 with its QuickJS
# backend (npm; the whole tree pinned by tests/guest-tools/package-lock.json). Both are
# installed under ${DOWNSYNC_CACHE_DIR:-~/.cache/downsync}/guest-tools, keyed by version (jco:
# by the lock file's hash), never in the checkout. A component is cached under
# guest-components/, keyed by the sha256 of everything that goes into it (its sources, the WIT,
# the SDK, the tool version and this script), so a warm run builds nothing: a cold Python build
# takes about 10-40 s, a JavaScript one about 5 s.
#
# Printed (stdout, the only output there):
#   DOWNSYNC_COMPONENTIZE_PY  the componentize-py executable
#   DOWNSYNC_JCO              the jco executable
#   DOWNSYNC_ROLLDOWN         the bundler jco ships (a JS plugin's imports are bundled first)
#   DOWNSYNC_GUEST_BUILD_DIR  a folder with python_hpa_replicas.wasm and js_hpa_replicas.wasm
# A toolchain that cannot be installed is an error, never a skip.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${DOWNSYNC_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/downsync}"
tools="$cache/guest-tools"
py_version=0.25.1
jco_version=1.35.0

say() { echo "guest-toolchains: $*" >&2; }
die() { echo "guest-toolchains: error: $*" >&2; exit 1; }
hash_files() { # sha256 of the named files' paths (relative to $root) and contents
  local f
  for f in "$@"; do printf '%s\n' "${f#"$root"/}"; sha256sum < "$f"; done | sha256sum | cut -c1-16
}
files_under() { find "$@" -type f ! -name '*.pyc' ! -path '*/__pycache__/*' ! -path '*/node_modules/*' | LC_ALL=C sort; }

# One installer at a time per cache (two CI runs on one machine share it).
lock() { mkdir -p "$tools"; exec 9>"$tools/.lock"; flock 9; }

install_python() {
  local dir="$tools/componentize-py-$py_version"
  # .complete marks a finished install: an interrupted one is started over.
  if [[ ! -f $dir/.complete ]]; then
    command -v python3 >/dev/null 2>&1 || die "python3 is missing (Debian: apt-get install python3 python3-venv)"
    python3 -c 'import sys; sys.exit(sys.version_info < (3, 10))' || die "python3 >= 3.10 is needed for componentize-py"
    say "installing componentize-py $py_version into $dir"
    rm -rf "$dir"
    python3 -m venv "$dir" >&2 || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
    "$dir/bin/pip" install --quiet --disable-pip-version-check "componentize-py==$py_version" >&2 \
      || die "pip could not install componentize-py==$py_version"
    touch "$dir/.complete"
  fi
  echo "$dir/bin/componentize-py"
}

install_js() {
  local key dir
  key="$(hash_files "$root/tests/guest-tools/package.json" "$root/tests/guest-tools/package-lock.json")"
  dir="$tools/jco-$jco_version-$key"
  if [[ ! -f $dir/.complete ]]; then
    command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 \
      || die "node and npm are missing (Debian: apt-get install nodejs npm; jco needs node >= 20)"
    node -e 'process.exit(Number(process.versions.node.split(".")[0]) < 20 ? 1 : 0)' \
      || die "node $(node --version) is too old: jco $jco_version needs node >= 20"
    say "installing @bytecodealliance/jco $jco_version into $dir"
    rm -rf "$dir" && mkdir -p "$dir"
    cp "$root/tests/guest-tools/package.json" "$root/tests/guest-tools/package-lock.json" "$dir/"
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >&2) || die "npm ci of @bytecodealliance/jco $jco_version failed"
    touch "$dir/.complete"
  fi
  echo "$dir/node_modules/.bin"
}

# build_python SRC OUT: the app module is SRC/app.py; the SDK is plugins/sdk-python.
build_python() {
  local src="$1" out="$2" py
  py="$(install_python)"
  "$py" -d "$root/wit" -w rule componentize app -p "$src" -p "$root/plugins/sdk-python" -o "$out" >&2 \
    || die "componentize-py failed for $src"
}

# build_js SRC OUT: SRC/app.js imports "downsync-rules" (plugins/sdk-js), bundled with rolldown
# first (componentize-qjs takes one module), then componentized with the QuickJS backend,
# synchronous exports (the async build needs component-model async, which the host does not
# enable). jco reads the WIT through a sandboxed wasm-tools that sees only the working
# folder, so everything is staged in one.
build_js() {
  local src="$1" out="$2" bin stage
  bin="$(install_js)"
  stage="$(mktemp -d)"
  cp -r "$src"/. "$stage/"
  rm -rf "$stage/node_modules" "$stage/fixtures"
  mkdir -p "$stage/node_modules"
  cp -r "$root/plugins/sdk-js" "$stage/node_modules/downsync-rules"
  cp -r "$root/wit" "$stage/wit"
  (
    cd "$stage"
    "$bin/rolldown" app.js --format esm --file bundle.js --external 'downsync:rules/host@0.2.0' >/dev/null
    "$bin/jco" componentize bundle.js --wit wit -n rule --backend qjs --backend-qjs-disable-async -o component.wasm >&2
  ) || { rm -rf "$stage"; die "jco componentize failed for $src"; }
  mv "$stage/component.wasm" "$out"
  rm -rf "$stage"
}

# cached LANG SRC NAME: the cached component for SRC (built when its inputs changed).
cached() {
  local lang="$1" src="$2" name="$3" key out sdk version
  case $lang in
    python) sdk="$root/plugins/sdk-python"; version="componentize-py-$py_version" ;;
    js) sdk="$root/plugins/sdk-js"; version="jco-$jco_version-$(hash_files "$root/tests/guest-tools/package-lock.json")" ;;
  esac
  # shellcheck disable=SC2046 # file names have no spaces
  key="$(hash_files $(files_under "$src" "$sdk") "$root/wit/rules.wit" "${BASH_SOURCE[0]}")-$version"
  out="$cache/guest-components/$name-$key.wasm"
  if [[ ! -f $out ]]; then
    mkdir -p "$cache/guest-components"
    say "building $name ($lang; cold: this takes a while)"
    local start=$SECONDS
    "build_$lang" "$src" "$out.tmp"
    mv "$out.tmp" "$out"
    say "built $name in $((SECONDS - start)) s: $(stat -c %s "$out") bytes"
  fi
  echo "$out"
}

case "${1:-}" in
  build)
    [[ $# == 4 && ( $2 == python || $2 == js ) ]] || die "usage: tests/guest-toolchains.sh build python|js SRC_DIR OUT.wasm"
    lock
    "build_$2" "$(cd "$3" && pwd)" "$4"
    ;;
  "")
    lock
    py="$(install_python)"
    jsbin="$(install_js)"
    python="$(cached python "$root/examples/plugins/python-hpa-replicas" python_hpa_replicas)"
    js="$(cached js "$root/examples/plugins/js-hpa-replicas" js_hpa_replicas)"
    # The tests find the components by crate-like names in one folder.
    set_dir="$cache/guest-components/set-$(printf '%s\n' "$python" "$js" | sha256sum | cut -c1-16)"
    if [[ ! -d $set_dir ]]; then
      mkdir -p "$set_dir.tmp"
      ln -f "$python" "$set_dir.tmp/python_hpa_replicas.wasm"
      ln -f "$js" "$set_dir.tmp/js_hpa_replicas.wasm"
      mv "$set_dir.tmp" "$set_dir"
    fi
    echo "export DOWNSYNC_COMPONENTIZE_PY=$py"
    echo "export DOWNSYNC_JCO=$jsbin/jco"
    echo "export DOWNSYNC_ROLLDOWN=$jsbin/rolldown"
    echo "export DOWNSYNC_GUEST_BUILD_DIR=$set_dir"
    ;;
  *) die "usage: tests/guest-toolchains.sh [build python|js SRC_DIR OUT.wasm]" ;;
esac

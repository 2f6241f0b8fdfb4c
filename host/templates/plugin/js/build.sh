#!/usr/bin/env bash
# Builds {{crate}}.wasm with jco's QuickJS backend (npm install: @bytecodealliance/jco 1.35.0).
# app.js and its imports are bundled into one module first (rolldown ships with jco), then
# componentized with synchronous exports and no wasi:http.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
bin=node_modules/.bin
jco="${JCO:-$bin/jco}"
rolldown="${ROLLDOWN:-$bin/rolldown}"
mkdir -p node_modules && rm -rf node_modules/downsync-rules && cp -r downsync-rules node_modules/downsync-rules
"$rolldown" app.js --format esm --file bundle.js --external 'downsync:rules/host@0.2.0' >/dev/null
"$jco" componentize bundle.js --wit wit -n rule --backend qjs --backend-qjs-disable-async -o {{crate}}.wasm

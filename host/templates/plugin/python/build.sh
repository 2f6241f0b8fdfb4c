#!/usr/bin/env bash
# Builds {{crate}}.wasm with componentize-py (pip install componentize-py==0.25.1).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
"${COMPONENTIZE_PY:-componentize-py}" -d wit -w rule componentize app -p . -o {{crate}}.wasm

#!/usr/bin/env bash
# Line coverage of the unit and integration tests, per module of host/src, into docs/coverage.md:
# the test command under cargo llvm-cov (see tests/run.sh --coverage). About 10 minutes on 2 cores.
set -euo pipefail
exec "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/run.sh" --coverage

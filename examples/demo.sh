#!/usr/bin/env bash
# The demo: two local control planes, downsync between them, and the rules at work.
# The syncer program (`downsync run`) does not exist yet, so there is nothing to show.
set -euo pipefail
echo "downsync demo: not yet. The syncer program (downsync run) is still being built;"
echo "run the tests meanwhile: tests/run.sh"

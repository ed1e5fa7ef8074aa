#!/usr/bin/env bash
# The run command: starts the daemon with the embedded default (no root
# needed): socket, state and an overlay pool with a demo container under
# ./.snapd-dev. Extra arguments go to `snapd serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/venv.sh
exec .venv/bin/snapd serve --dev "$@"

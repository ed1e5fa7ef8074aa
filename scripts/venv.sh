#!/usr/bin/env bash
# Creates .venv (if missing) and installs the project into it.
# Usage: scripts/venv.sh [test]   ("test" adds the test dependencies)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv 2>/dev/null || {
    if [ "$(id -u)" = 0 ]; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
      python3 -m venv .venv
    else
      echo "python3 -m venv failed: install python3-venv" >&2; exit 1
    fi
  }
fi
extra=""
[ "${1:-}" = test ] && extra="[test]"
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".${extra}"

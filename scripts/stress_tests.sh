#!/usr/bin/env bash
# Runs test files N times in a row while two CPU-burning processes run beside
# them, and stops at the first failing run: evidence that the timing-sensitive
# tests wait for what they assert, not for the machine to be quick.
#
#   scripts/stress_tests.sh [-n RUNS] [TEST_FILE...] [-- PYTEST_ARGS...]
#
# Defaults: 20 runs of the timing-sensitive files (below). CI defaults to true
# (a missing btrfs/ZFS/overlayfs fails instead of skipping). Each run's pytest
# output goes to a log under $STRESS_LOG_DIR (default: a fresh temporary
# directory); the failing run's log is printed. Exit status: 0 when every run
# passed, else the failing run's pytest status (130 when interrupted).
set -euo pipefail
cd "$(dirname "$0")/.."

DEFAULT_FILES=(
  tests/test_reaper.py tests/test_concurrency.py tests/test_scale.py tests/test_faults.py
  tests/test_network.py tests/test_systemd.py tests/test_daemon_systemd.py tests/test_serve.py
  tests/test_reconcile.py
)
runs=20
files=()
pytest_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    -n) runs="$2"; shift 2 ;;
    -n*) runs="${1#-n}"; shift ;;
    -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    --) shift; pytest_args=("$@"); break ;;
    *) files+=("$1"); shift ;;
  esac
done
[ ${#files[@]} -gt 0 ] || files=("${DEFAULT_FILES[@]}")
case "$runs" in ''|*[!0-9]*|0) echo "runs must be a positive integer, not '$runs'" >&2; exit 2 ;; esac

[ -x .venv/bin/python ] || scripts/venv.sh test
py=.venv/bin/python
logs="${STRESS_LOG_DIR:-$(mktemp -d -t snapd-stress.XXXXXX)}"
mkdir -p "$logs"

burners=()
pytest_pid=""
stop_burners() {
  # only what this script started, by pid
  for pid in "${burners[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${burners[@]}"; do wait "$pid" 2>/dev/null || true; done
  burners=()
}
interrupted() {
  # pytest stops as on Ctrl-C, so its fixtures still remove their pools and mounts
  # (a terminal's Ctrl-C has reached it already; a TERM to this script is passed on)
  if [ -n "$pytest_pid" ]; then
    [ "$1" = TERM ] && kill -INT "$pytest_pid" 2>/dev/null
    wait "$pytest_pid" 2>/dev/null || true
  fi
  echo; echo "interrupted"
  exit 130
}
trap stop_burners EXIT
trap 'interrupted INT' INT
trap 'interrupted TERM' TERM

for _ in 1 2; do
  "$py" -c 'while True: pass' &
  burners+=($!)
done
echo "load: 2 CPU burners (pids ${burners[*]}) on $(nproc) cores; $runs runs of: ${files[*]}"
echo "logs: $logs"

durations=()
for i in $(seq 1 "$runs"); do
  log="$logs/run-$i.log"
  start=$(date +%s.%N)
  rc=0
  # in the background (so this script can react to signals), with SIGINT handled
  # as in the foreground: bash starts background jobs with SIGINT ignored
  CI="${CI:-true}" "$py" -c 'import signal, sys, pytest
signal.signal(signal.SIGINT, signal.default_int_handler)
sys.exit(pytest.main(sys.argv[1:]))' -x -q -p no:cacheprovider "${files[@]}" "${pytest_args[@]}" >"$log" 2>&1 &
  pytest_pid=$!
  wait "$pytest_pid" || rc=$?
  pytest_pid=""
  secs=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
  durations+=("$secs")
  if [ "$rc" != 0 ]; then
    cat "$log"
    echo "run $i of $runs FAILED (pytest exit $rc) after ${secs}s; passed runs before it: $((i - 1))"
    echo "durations (s): ${durations[*]}"
    exit "$rc"
  fi
  echo "run $i/$runs passed in ${secs}s: $(tail -n 1 "$log")"
done
echo "all $runs runs passed; durations (s): ${durations[*]}"

#!/usr/bin/env bash
# Runs test files N times in a row while two CPU-burning processes run beside
# them, and stops at the first failing run: evidence that the timing-sensitive
# tests wait for what they assert, not for the machine to be quick.
#
#   scripts/stress_tests.sh [-n RUNS] [--lane K_EXPR]... [TEST_FILE...] [-- PYTEST_ARGS...]
#
# Defaults: 20 runs of the timing-sensitive files (below). CI defaults to true
# (a missing btrfs/ZFS/overlayfs fails instead of skipping). With lanes, the
# selected tests are split by pytest -k expressions (e.g. --lane zfs --lane
# 'not zfs') and the lanes run at the same time, each N runs in a row, beside
# the same two burners: every test still passes N runs in a row, under more
# load, in less time. Each run's pytest output goes to a log under
# $STRESS_LOG_DIR (default: a fresh temporary directory); a failing run's log
# is printed. Exit status: 0 when every run passed, else the first failing
# run's pytest status (130 when interrupted).
set -euo pipefail
cd "$(dirname "$0")/.."

DEFAULT_FILES=(
  tests/test_reaper.py tests/test_concurrency.py tests/test_scale.py tests/test_faults.py
  tests/test_network.py tests/test_systemd.py tests/test_daemon_systemd.py
)
runs=20
files=()
lanes=()
pytest_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    -n) runs="$2"; shift 2 ;;
    -n*) runs="${1#-n}"; shift ;;
    --lane) lanes+=("$2"); shift 2 ;;
    -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    --) shift; pytest_args=("$@"); break ;;
    *) files+=("$1"); shift ;;
  esac
done
[ ${#files[@]} -gt 0 ] || files=("${DEFAULT_FILES[@]}")
case "$runs" in ''|*[!0-9]*|0) echo "runs must be a positive integer, not '$runs'" >&2; exit 2 ;; esac

[ -x .venv/bin/python ] || scripts/venv.sh test
py=.venv/bin/python
logs="${STRESS_LOG_DIR:-$(mktemp -d -t snapd-stress.XXXXXX)}"
mkdir -p "$logs/tmp"

# One lane: N runs in a row of the files (restricted by -k when the lane has an
# expression), stopping at the first failure. Runs in a subshell of its own.
lane() {
  local expr="$1" prefix="$2" pytest_pid="" i log start rc secs
  local -a durations=() select=()
  [ -z "$expr" ] || select=(-k "$expr")
  # a TERM from the script stops pytest as on Ctrl-C, so its fixtures still remove
  # their pools and mounts (a terminal's Ctrl-C has reached pytest already)
  trap '[ -n "$pytest_pid" ] && kill -INT "$pytest_pid" 2>/dev/null; wait "$pytest_pid" 2>/dev/null; exit 130' TERM
  for i in $(seq 1 "$runs"); do
    log="$logs/${prefix}run-$i.log"
    # a temporary root of the run's own: no other pytest on the machine can leave a tree
    # there that pytest's recursive clean-up trips on; removed after a passing run
    tmp="$logs/tmp/${prefix//[^a-z]/}run-$i"
    start=$(date +%s.%N)
    rc=0
    # in the background (so the lane can react to signals), with SIGINT handled
    # as in the foreground: bash starts background jobs with SIGINT ignored
    CI="${CI:-true}" "$py" -c 'import signal, sys, pytest
signal.signal(signal.SIGINT, signal.default_int_handler)
sys.exit(pytest.main(sys.argv[1:]))' -x -q -p no:cacheprovider --basetemp="$tmp" "${select[@]}" "${files[@]}" "${pytest_args[@]}" >"$log" 2>&1 &
    pytest_pid=$!
    wait "$pytest_pid" || rc=$?
    pytest_pid=""
    secs=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    durations+=("$secs")
    if [ "$rc" != 0 ]; then
      cat "$log"
      echo "${prefix}run $i of $runs FAILED (pytest exit $rc) after ${secs}s; passed runs before it: $((i - 1))"
      echo "${prefix}durations (s): ${durations[*]}"
      exit "$rc"
    fi
    [ ! -e "$tmp" ] || "$py" -c 'import sys; from backends.remove import remove_tree; remove_tree(sys.argv[1])' "$tmp"
    echo "${prefix}run $i/$runs passed in ${secs}s: $(tail -n 1 "$log")"
  done
  echo "${prefix}all $runs runs passed; durations (s): ${durations[*]}"
}

burners=()
lane_pids=()
stop_all() {
  # only what this script started, by pid
  for pid in "${lane_pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${lane_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  lane_pids=()
  for pid in "${burners[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${burners[@]}"; do wait "$pid" 2>/dev/null || true; done
  burners=()
}
interrupted() {
  stop_all
  echo; echo "interrupted"
  exit 130
}
trap stop_all EXIT
trap interrupted INT TERM

for _ in 1 2; do
  "$py" -c 'while True: pass' &
  burners+=($!)
done
echo "load: 2 CPU burners (pids ${burners[*]}) on $(nproc) cores; $runs runs of: ${files[*]}"
echo "logs: $logs"

if [ ${#lanes[@]} -eq 0 ]; then
  lane "" "" &
  lane_pids+=($!)
else
  for expr in "${lanes[@]}"; do
    echo "lane [$expr]: -k '$expr'"
    lane "$expr" "[$expr] " &
    lane_pids+=($!)
  done
fi
status=0
# the first lane to fail stops the others
while [ ${#lane_pids[@]} -gt 0 ]; do
  rc=0
  wait -n "${lane_pids[@]}" || rc=$?
  left=()
  for pid in "${lane_pids[@]}"; do kill -0 "$pid" 2>/dev/null && left+=("$pid"); done
  lane_pids=("${left[@]}")
  if [ "$rc" != 0 ] && [ "$status" = 0 ]; then
    status=$rc
    stop_all
  fi
done
[ "$status" = 0 ] && [ ${#lanes[@]} -gt 1 ] && echo "all lanes passed $runs runs in a row"
exit "$status"

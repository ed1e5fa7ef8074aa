"""scripts/stress_tests.sh: N runs beside two CPU burners, stopping at the first failure."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from .waiting import until

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "stress_tests.sh"


def stress(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, list[int]]:
    out = subprocess.run([str(SCRIPT), *args], cwd=REPO, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "STRESS_LOG_DIR": str(tmp_path / "logs")})
    found = re.search(r"CPU burners \(pids (\d+) (\d+)\)", out.stdout)
    assert found, out.stdout + out.stderr
    return out, [int(p) for p in found.groups()]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def test_runs_n_times_and_stops_its_burners(tmp_path: Path) -> None:
    (tmp_path / "test_ok.py").write_text("def test_ok():\n    assert True\n")
    out, burners = stress(tmp_path, "-n", "2", str(tmp_path / "test_ok.py"))
    assert out.returncode == 0, out.stdout + out.stderr
    assert [int(n) for n in re.findall(r"^run (\d+)/2 passed in [\d.]+s", out.stdout, re.M)] == [1, 2]
    assert re.search(r"all 2 runs passed; durations \(s\): [\d.]+ [\d.]+$", out.stdout, re.M)
    assert not [p for p in burners if alive(p)]


def test_stops_at_the_first_failure_and_shows_it(tmp_path: Path) -> None:
    counter = tmp_path / "count"
    (tmp_path / "test_second_fails.py").write_text(
        "from pathlib import Path\n"
        f"COUNT = Path({str(counter)!r})\n"
        "def test_second_run_fails():\n"
        "    n = int(COUNT.read_text()) + 1 if COUNT.exists() else 1\n"
        "    COUNT.write_text(str(n))\n"
        "    assert n != 2, 'the second run fails'\n")
    out, burners = stress(tmp_path, "-n", "3", str(tmp_path / "test_second_fails.py"))
    assert out.returncode == 1
    assert "run 2 of 3 FAILED (pytest exit 1)" in out.stdout and "passed runs before it: 1" in out.stdout
    assert "the second run fails" in out.stdout  # the failing run's output
    assert counter.read_text() == "2"  # no third run
    assert not [p for p in burners if alive(p)]


def test_a_term_stops_pytest_as_on_ctrl_c_and_the_burners(tmp_path: Path) -> None:
    started, cleaned = tmp_path / "started", tmp_path / "cleaned"
    (tmp_path / "test_hangs.py").write_text(
        "import os, time\nfrom pathlib import Path\nimport pytest\n"
        "@pytest.fixture\ndef pool():\n"
        f"    yield\n    Path({str(cleaned)!r}).write_text('yes')\n"
        "def test_hangs(pool):\n"
        f"    Path({str(started)!r}).write_text(str(os.getpid()))\n"
        "    time.sleep(600)\n")
    proc = subprocess.Popen([str(SCRIPT), "-n", "2", str(tmp_path / "test_hangs.py")], cwd=REPO,
                            stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "STRESS_LOG_DIR": str(tmp_path / "logs")})
    try:
        until(lambda: started.exists() and started.read_text(), "the test run is under way")
        proc.terminate()
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, out
    assert cleaned.read_text() == "yes"  # its fixture's teardown ran
    assert not alive(int(started.read_text()))
    pids = re.search(r"CPU burners \(pids (\d+) (\d+)\)", out)
    assert pids and not [p for p in map(int, pids.groups()) if alive(p)], out


def test_lanes_split_the_tests_and_the_first_failing_lane_stops_the_others(tmp_path: Path) -> None:
    counter = tmp_path / "count"
    (tmp_path / "test_lanes.py").write_text(
        "import time\nfrom pathlib import Path\n"
        f"COUNT = Path({str(counter)!r})\n"
        "def test_fast_fails_second():\n"
        "    n = int(COUNT.read_text()) + 1 if COUNT.exists() else 1\n"
        "    COUNT.write_text(str(n))\n"
        "    assert n != 2, 'the second run fails'\n"
        "def test_slow():\n"
        "    time.sleep(600)\n")
    out, burners = stress(tmp_path, "-n", "3", "--lane", "fast", "--lane", "slow", str(tmp_path / "test_lanes.py"))
    assert out.returncode == 1, out.stdout
    assert "[fast] run 1/3 passed" in out.stdout and "[fast] run 2 of 3 FAILED (pytest exit 1)" in out.stdout
    assert "[slow] run" not in out.stdout  # stopped mid-run by the failing lane, not left to run on
    assert counter.read_text() == "2"
    assert not [p for p in burners if alive(p)]


def test_an_interrupted_run_leaves_no_daemon_running(tmp_path: Path) -> None:
    """Ctrl-C in the middle of a test that started a daemon: the session's end kills it."""
    pidfile = tmp_path / "daemon.pid"
    (tmp_path / "pool").mkdir()
    (tmp_path / "test_interrupted.py").write_text(
        "import os, signal\n"
        "from pathlib import Path\n"
        "from tests.daemon import DaemonProcess\n"
        "def test_interrupted():\n"
        f"    d = DaemonProcess(Path({str(tmp_path / 'd')!r}), ['overlay:{tmp_path / 'pool'}'], tcp=False).start()\n"
        f"    Path({str(pidfile)!r}).write_text(str(d.proc.pid))\n"
        "    signal.signal(signal.SIGINT, signal.default_int_handler)  # a background job starts with it ignored\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n")
    out = subprocess.run([str(REPO / ".venv" / "bin" / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "-p", "tests.conftest", "--rootdir", str(tmp_path), str(tmp_path / "test_interrupted.py")],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stdout + out.stderr  # interrupted
    assert "killed 1 daemon(s) left running by interrupted tests" in out.stdout, out.stdout + out.stderr
    assert not alive(int(pidfile.read_text()))

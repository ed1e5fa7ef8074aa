"""Shared fixtures: real pools of every backend kind, real daemons."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from .aftercheck import host_unharmed  # noqa: F401  (a fixture, shared by the finding tests)
from .daemon import DaemonProcess, kill_leftover_daemons
from .harness import HARNESSES, PoolHarness, harness_class

IN_CI = os.environ.get("CI", "").lower() == "true"


def unavailable(reason: str) -> None:
    """Skip with the reason; under CI=true a missing real component fails the run."""
    if IN_CI:
        pytest.fail(f"required in CI but unavailable: {reason}", pytrace=False)
    pytest.skip(reason)


def pool_kinds() -> list[str]:
    """The backend kinds the `pool` fixture runs (all of them under CI)."""
    wanted = os.environ.get("SNAPD_TEST_KINDS")
    if wanted and not IN_CI:
        return [k for k in wanted.split(",") if k in HARNESSES]
    return list(HARNESSES)


@pytest.fixture(scope="session")
def session_tmp() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="snapd-test-") as d:
        yield Path(d)


def open_harness(kind: str, workdir: Path) -> PoolHarness:
    if kind not in pool_kinds():  # a module's own pool too (outside CI only)
        pytest.skip(f"SNAPD_TEST_KINDS={os.environ.get('SNAPD_TEST_KINDS')} leaves out {kind}")
    try:
        cls = harness_class(kind)
    except ImportError as exc:
        unavailable(f"{kind} harness cannot be imported: {exc}")
    reason = cls.unavailable()
    if reason:
        unavailable(f"{kind}: {reason}")
    return cls(workdir)


@pytest.fixture(scope="session", params=pool_kinds())
def pool(request: pytest.FixtureRequest, session_tmp: Path) -> Iterator[PoolHarness]:
    """A real pool of each backend kind (the shared API suite runs on all)."""
    harness = open_harness(request.param, session_tmp / f"pool-{request.param}")
    try:
        yield harness
    finally:
        harness.close()


@pytest.fixture(scope="session")
def daemon(pool: PoolHarness, session_tmp: Path) -> Iterator[DaemonProcess]:
    """A daemon serving `pool` on a Unix socket and on TCP (127.0.0.1)."""
    d = DaemonProcess(session_tmp / f"daemon-{pool.kind}", [pool.spec]).start()
    try:
        yield d
    finally:
        code = d.stop()
        assert code == 0, f"daemon exited {code}:\n{d.log_text()[-3000:]}"


@pytest.fixture(scope="module")
def overlay_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DaemonProcess, Path]]:
    """A daemon on a plain directory pool of its own, shared by one test module."""
    base = tmp_path_factory.mktemp("overlay-env")
    pool = base / "pool"
    pool.mkdir()
    d = DaemonProcess(base / "d", [f"overlay:{pool}"], tcp=False).start()
    try:
        yield d, pool
    finally:
        code = d.stop()
        assert code == 0, f"daemon exited {code}:\n{d.log_text()[-3000:]}"


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    """Before the session's fixtures remove pools: kill daemons an interrupted test left running."""
    left = kill_leftover_daemons()
    if left:
        print(f"\nkilled {left} daemon(s) left running by interrupted tests")

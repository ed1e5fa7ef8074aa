"""The daemon's clock: SNAPD_CLOCK_FILE moves it, and sleeps follow the file."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from snapd.core.clock import Clock

from .clockfile import ClockFile
from .waiting import within

T0 = 1_750_000_000.0


def test_a_number_stops_the_clock_there_and_a_new_one_moves_it(tmp_path: Path) -> None:
    f = ClockFile(tmp_path / "clock", T0)
    clock = Clock(file=f.path)
    assert clock.now() == T0
    assert clock.now() == T0  # stopped
    f.advance(3600.5)
    assert clock.now() == T0 + 3600.5
    f.set(T0 - 10)  # back in time, as an NTP step may
    assert clock.now() == T0 - 10


def test_a_signed_number_is_an_offset_and_the_clock_runs(tmp_path: Path) -> None:
    f = ClockFile(tmp_path / "clock", T0)
    clock = Clock(file=f.path)
    f.run_offset(86400)
    assert abs(clock.now() - (time.time() + 86400)) < 1
    f.run_offset(-60)
    assert abs(clock.now() - (time.time() - 60)) < 1


def test_a_missing_or_bad_file_leaves_the_clock_as_it_was(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "clock"
    clock = Clock(file=path)  # no file yet: real time
    assert abs(clock.now() - time.time()) < 1
    f = ClockFile(path, T0)
    assert clock.now() == T0
    for bad in ("", "soon", "nan", "inf", "\xff"):
        path.write_bytes(bad.encode("latin-1"))
        assert clock.now() == T0
    assert "cannot read a time" in caplog.text
    path.unlink()
    assert clock.now() == T0
    f.set(T0 + 1)
    assert clock.now() == T0 + 1


def test_the_file_is_only_honoured_when_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SNAPD_CLOCK_FILE", raising=False)
    ClockFile(tmp_path / "clock", T0)
    assert abs(Clock().now() - time.time()) < 1
    monkeypatch.setenv("SNAPD_CLOCK_FILE", str(tmp_path / "clock"))
    assert Clock().now() == T0


async def test_a_sleep_ends_when_the_file_reaches_its_time(tmp_path: Path) -> None:
    f = ClockFile(tmp_path / "clock", T0)
    clock = Clock(file=f.path)
    sleeper = asyncio.create_task(clock.sleep_until(T0 + 3600, asyncio.Event()))
    f.advance(3599)
    await asyncio.sleep(0.1)
    assert not sleeper.done()  # a stopped clock short of the time: still asleep
    f.advance(1)
    await within(sleeper, "the sleep to end once the file says T0 + 3600", timeout=10)


async def test_a_sleep_still_ends_on_its_wake_event(tmp_path: Path) -> None:
    f = ClockFile(tmp_path / "clock", T0)
    clock = Clock(file=f.path)
    wake = asyncio.Event()
    sleeper = asyncio.create_task(clock.sleep_until(T0 + 3600, wake))
    await asyncio.sleep(0.05)
    wake.set()
    await within(sleeper, "the sleep to end on its wake event", timeout=10)

"""Replication without daemons: the `[targets.NAME]` tables, the plan, the bandwidth limit, the token file."""

from __future__ import annotations

from pathlib import Path

import pytest

from snapd.core.replication_plan import PORTABLE, Accepts, Diverged, Send, Snap, plan, stream_kind
from snapd.core.settings import Target
from snapd.host.config import ConfigError, build, check


def _targets(table: dict) -> dict[str, Target]:
    return build({"targets": table}, {}, "cfg").targets


def test_a_target_table_is_read_with_its_defaults_and_units() -> None:
    got = _targets({"backup1": {"url": "https://10.0.0.9:7070/", "token_file": "/etc/t",
                                "tls_ca": "/etc/ca.pem", "bandwidth": "50MiB"},
                    "lan": {"url": "http://[fd00::1]:7070", "token_file": "/etc/t2", "bandwidth": 2048,
                            "compression": "zstd"}})
    assert got["backup1"] == Target("backup1", "https://10.0.0.9:7070", "/etc/t", "/etc/ca.pem", 50 << 20)
    assert got["lan"] == Target("lan", "http://[fd00::1]:7070", "/etc/t2", None, 2048, "zstd")
    assert build({}, {}, "cfg").targets == {}


@pytest.mark.parametrize("table, key, words", [
    ({"url": "ftp://h:1", "token_file": "/t"}, "targets.b.url", "http(s)://HOST[:PORT]"),
    ({"url": "https://h:1/api", "token_file": "/t"}, "targets.b.url", "http(s)://HOST[:PORT]"),
    ({"url": "https://h:99999", "token_file": "/t"}, "targets.b.url", "http(s)://HOST[:PORT]"),
    ({"url": "https://u:p@h:1", "token_file": "/t"}, "targets.b.url", "http(s)://HOST[:PORT]"),
    ({"url": "https://:p@h:1", "token_file": "/t"}, "targets.b.url", "http(s)://HOST[:PORT]"),
    ({"url": "https://h:1", "token_file": "/t", "bandwidth": "inf"}, "targets.b.bandwidth", "50MiB"),
    ({"url": "https://h:1", "token_file": "/t", "bandwidth": "1e999MiB"}, "targets.b.bandwidth", "50MiB"),
    ({"url": "https://h:1", "token_file": "/t", "bandwidth": "nan"}, "targets.b.bandwidth", "50MiB"),
    ({"url": 7070, "token_file": "/t"}, "targets.b.url", "http(s)://HOST[:PORT]"),
    ({"token_file": "/t"}, "targets.b.url", "required"),
    ({"url": "https://h:1"}, "targets.b.token_file", "required"),
    ({"url": "https://h:1", "token_file": "rel/t"}, "targets.b.token_file", "absolute path"),
    ({"url": "http://h:1", "token_file": "/t", "tls_ca": "/ca"}, "targets.b.tls_ca", "https"),
    ({"url": "https://h:1", "token_file": "/t", "bandwidth": "fast"}, "targets.b.bandwidth", "50MiB"),
    ({"url": "https://h:1", "token_file": "/t", "bandwidth": 10}, "targets.b.bandwidth", "at least"),
    ({"url": "https://h:1", "token_file": "/t", "bandwidth": True}, "targets.b.bandwidth", "bytes per second"),
    ({"url": "https://h:1", "token_file": "/t", "speed": 1}, "targets.b", "unknown key(s) speed"),
    ({"url": "https://h:1", "token_file": "/t", "compression": "gzip"}, "targets.b.compression", '"none" or "zstd"'),
    ({"url": "https://h:1", "token_file": "/t", "compression": 3}, "targets.b.compression", '"none" or "zstd"'),
    ("https://h:1", "targets.b", "must be a table"),
])
def test_a_bad_target_value_is_an_error_naming_its_key(table: object, key: str, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _targets({"b": table})
    assert f"cfg: {key}" in str(caught.value) and words in str(caught.value), caught.value


@pytest.mark.parametrize("key", ["stream_idle_timeout", "request_timeout"])
def test_the_stream_idle_timeout_is_read_and_checked(key: str) -> None:
    assert build({}, {}, "cfg").stream_idle_timeout == 120.0
    assert getattr(build({key: 7}, {}, "cfg"), key) == 7.0
    for bad in (0, -1, 3601, "soon"):
        with pytest.raises(ConfigError, match=f"cfg: {key} must be a number of seconds from 0 to 3600"):
            build({key: bad}, {}, "cfg")


def test_a_bad_target_name_is_refused() -> None:
    with pytest.raises(ConfigError, match="name is 1-64"):
        _targets({"a b": {"url": "https://h:1", "token_file": "/t"}})


def test_check_needs_the_token_file_readable(tmp_path: Path) -> None:
    (tmp_path / "pool").mkdir()
    flags = {"pools": [f"overlay:{tmp_path / 'pool'}"], "socket": str(tmp_path / "s"),
             "state_dir": str(tmp_path / "st")}
    cfg = build({"targets": {"b": {"url": "https://h:1", "token_file": str(tmp_path / "no")}}}, flags, "cfg")
    with pytest.raises(ConfigError, match=r"cfg: targets\.b\.token_file: .* does not exist"):
        check(cfg)
    (tmp_path / "no").write_text("csd_x")
    check(cfg)


# -- the plan -----------------------------------------------------------------------------

def _snaps(*pairs: tuple[str, float]) -> list[Snap]:
    return [Snap(n, t) for n, t in pairs]


A, B, C, D = ("a", 1.0), ("b", 2.0), ("c", 3.0), ("d", 4.0)


def test_a_first_send_is_everything_oldest_first_the_first_in_full() -> None:
    got = plan(_snaps(C, A, B), [])
    assert got.sends == [Send("a", None), Send("b", "a"), Send("c", "b")] and got.common is None


def test_later_sends_start_from_the_newest_common_snapshot() -> None:
    got = plan(_snaps(A, B, C, D), _snaps(A, B))
    assert got.sends == [Send("c", "b"), Send("d", "c")] and got.common == "b"


def test_nothing_to_send_when_the_target_is_up_to_date() -> None:
    assert plan(_snaps(A, B), _snaps(A, B)).sends == []


def test_snapshots_the_target_pruned_or_the_sender_pruned_are_no_divergence() -> None:
    # the target pruned a; the sender pruned b after sending it; c is common
    got = plan(_snaps(A, C, D), _snaps(B, C))
    assert got.sends == [Send("d", "c")] and got.common == "c"


def test_equal_times_are_ordered_by_name() -> None:
    got = plan(_snaps(("x-2", 5.0), ("x", 5.0)), [])
    assert got.sends == [Send("x", None), Send("x-2", "x")]


def test_a_snapshot_on_the_target_newer_than_the_common_one_is_divergence_naming_it() -> None:
    with pytest.raises(Diverged) as caught:
        plan(_snaps(A, B, D), _snaps(A, B, C))
    assert caught.value.snapshots == ["c"] and "newer than b" in caught.value.message
    assert "full" in caught.value.message


def test_a_target_without_any_common_snapshot_is_divergence() -> None:
    with pytest.raises(Diverged) as caught:
        plan(_snaps(C, D), _snaps(A, B))
    assert caught.value.snapshots == ["a", "b"] and "no common snapshot" in caught.value.message


def test_full_sends_anyway_the_first_in_full() -> None:
    assert plan(_snaps(C, D), _snaps(A, B), full=True).sends == [Send("c", None), Send("d", "c")]
    assert plan(_snaps(A, B, D), _snaps(A, B, ("x", 3.0)), full=True).sends == [Send("d", None)]
    assert plan(_snaps(A, B), _snaps(A), full=True).sends == [Send("b", None)]


def test_a_name_the_target_gave_its_own_snapshot_is_not_common() -> None:
    """Both daemons name by the second: the target's own snap-X-2 is not the sender's."""
    with pytest.raises(Diverged) as caught:
        plan(_snaps(A, ("b", 2.0)), _snaps(A, ("b", 2.5)))
    assert caught.value.snapshots == ["b"]


# -- the bandwidth limit --------------------------------------------------------------------


def test_the_throttle_keeps_the_average_rate_with_an_injected_clock() -> None:
    import asyncio

    from snapd.core.replication import Throttle

    now = [100.0]
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    async def run() -> None:
        t = Throttle(1000, monotonic=lambda: now[0], sleep=sleep)
        await t.pace(500)  # half a second's worth: wait until then
        await t.pace(500)
        now[0] += 3.0  # a pause: one second of it is credited, no more
        await t.pace(1000)
        assert slept == [0.5, 0.5]
        await t.pace(1000)
        assert slept == [0.5, 0.5, 1.0]
        await t.pace(2000)
        assert slept == [0.5, 0.5, 1.0, 2.0]
        unlimited = Throttle(None, monotonic=lambda: now[0], sleep=sleep)
        await unlimited.pace(10**9)
        assert slept == [0.5, 0.5, 1.0, 2.0]

    asyncio.run(run())


def test_a_token_file_without_a_token_fails_before_any_request(tmp_path: Path) -> None:
    import asyncio

    from snapd.core.replication import RemoteError
    from snapd.host.remote import HttpRemote

    for content in (b"", b"two words\n", b"\xff\xfe", b"csd_x\x00"):
        (tmp_path / "t").write_bytes(content)
        remote = HttpRemote(Target("b", "http://127.0.0.1:1", str(tmp_path / "t")))
        with pytest.raises(RemoteError, match=r"targets\.b\.token_file"):
            asyncio.run(remote.snapshots("0" * 24))
    remote = HttpRemote(Target("b", "http://127.0.0.1:1", str(tmp_path / "gone")))
    with pytest.raises(RemoteError, match="cannot read targets.b.token_file"):
        asyncio.run(remote.snapshots("0" * 24))


@pytest.mark.parametrize("native, kinds, bases, base, expected", [
    ("btrfs", ("btrfs", PORTABLE), set(), None, "btrfs"),  # a full send: native when the target takes it
    ("btrfs", ("btrfs", PORTABLE), {"a"}, "a", "btrfs"),  # an incremental from a native base
    ("btrfs", ("btrfs", PORTABLE), {"a"}, "b", PORTABLE),  # b arrived portable there: no native parent
    ("btrfs", ("zfs", PORTABLE), set(), None, PORTABLE),  # another filesystem
    ("btrfs", (PORTABLE,), set(), None, PORTABLE),  # an overlay pool, or a daemon that cannot say
    (None, ("btrfs", PORTABLE), {"a"}, "a", PORTABLE),  # an overlay sender
    ("zfs", ("zfs", PORTABLE), {"a"}, "a", "zfs"),
])
def test_the_stream_kind_is_native_only_when_both_sides_can(native: str | None, kinds: tuple, bases: set,
                                                            base: str | None, expected: str) -> None:
    assert stream_kind(native, Accepts(kinds, frozenset(bases)), base) == expected

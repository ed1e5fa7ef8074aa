"""Replication's pure parts: the `[targets.NAME]` config tables and the plan of what to send."""

from __future__ import annotations

from pathlib import Path

import pytest

from snapd.core.settings import Target
from snapd.host.config import ConfigError, build, check


def _targets(table: dict) -> dict[str, Target]:
    return build({"targets": table}, {}, "cfg").targets


def test_a_target_table_is_read_with_its_defaults_and_units() -> None:
    got = _targets({"backup1": {"url": "https://10.0.0.9:7070/", "token_file": "/etc/t",
                                "tls_ca": "/etc/ca.pem", "bandwidth": "50MiB"},
                    "lan": {"url": "http://[fd00::1]:7070", "token_file": "/etc/t2", "bandwidth": 2048}})
    assert got["backup1"] == Target("backup1", "https://10.0.0.9:7070", "/etc/t", "/etc/ca.pem", 50 << 20)
    assert got["lan"] == Target("lan", "http://[fd00::1]:7070", "/etc/t2", None, 2048)
    assert build({}, {}, "cfg").targets == {}


@pytest.mark.parametrize("table, key, words", [
    ({"url": "ftp://h:1", "token_file": "/t"}, "targets.b.url", "http(s)://HOST[:PORT]"),
    ({"url": "https://h:1/api", "token_file": "/t"}, "targets.b.url", "http(s)://HOST[:PORT]"),
    ({"url": "https://h:99999", "token_file": "/t"}, "targets.b.url", "http(s)://HOST[:PORT]"),
    ({"url": "https://u:p@h:1", "token_file": "/t"}, "targets.b.url", "http(s)://HOST[:PORT]"),
    ({"url": 7070, "token_file": "/t"}, "targets.b.url", "http(s)://HOST[:PORT]"),
    ({"token_file": "/t"}, "targets.b.url", "required"),
    ({"url": "https://h:1"}, "targets.b.token_file", "required"),
    ({"url": "https://h:1", "token_file": "rel/t"}, "targets.b.token_file", "absolute path"),
    ({"url": "http://h:1", "token_file": "/t", "tls_ca": "/ca"}, "targets.b.tls_ca", "https"),
    ({"url": "https://h:1", "token_file": "/t", "bandwidth": "fast"}, "targets.b.bandwidth", "50MiB"),
    ({"url": "https://h:1", "token_file": "/t", "bandwidth": 10}, "targets.b.bandwidth", "at least"),
    ({"url": "https://h:1", "token_file": "/t", "bandwidth": True}, "targets.b.bandwidth", "bytes per second"),
    ({"url": "https://h:1", "token_file": "/t", "speed": 1}, "targets.b", "unknown key(s) speed"),
    ("https://h:1", "targets.b", "must be a table"),
])
def test_a_bad_target_value_is_an_error_naming_its_key(table: object, key: str, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _targets({"b": table})
    assert f"cfg: {key}" in str(caught.value) and words in str(caught.value), caught.value


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

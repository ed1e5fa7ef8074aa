"""Policy-driven replication without daemons: the retry rule, and the policy's `targets` key."""

from __future__ import annotations

import pytest

from snapd.core.policies.spec import PolicyError, check_targets, parse_policy, policy_json
from snapd.core.replication_retry import CAP, FIRST, Streak, retry_delay
from snapd.host.config import ConfigError, build

POLICY = {"schedule": "0 * * * *", "applies_to": ["project:web"], "keep_last": 3}
TARGET = {"url": "http://10.0.0.9:7070", "token_file": "/etc/t"}


def test_the_backoff_doubles_from_a_minute_to_an_hour_and_stays_there() -> None:
    assert FIRST == 60 and CAP == 3600
    assert [retry_delay(n) for n in range(1, 10)] == [60, 120, 240, 480, 960, 1920, 3600, 3600, 3600]
    assert retry_delay(10_000) == 3600
    with pytest.raises(ValueError):
        retry_delay(0)


def test_a_streak_counts_failures_resets_on_success_and_a_new_snapshot_supersedes_the_retry() -> None:
    s = Streak()
    assert (s.attempt, s.retry_at) == (1, None)
    s = s.after(False, 1000.0)
    assert (s.failures, s.attempt, s.retry_at) == (1, 2, 1060.0)
    s = s.after(False, 1060.5)
    assert (s.attempt, s.retry_at) == (3, 1180.5)
    s = s.superseded()  # a new snapshot's job starts now: no retry pending, the count goes on
    assert (s.attempt, s.retry_at) == (3, None)
    s = s.after(False, 2000.0)
    assert (s.attempt, s.retry_at) == (4, 2240.0)
    assert s.after(True, 2240.0) == Streak()
    for _ in range(20):
        s = s.after(False, 0.0)
    assert s.retry_at == CAP


def test_a_policy_names_its_targets_and_the_json_form_round_trips() -> None:
    spec = parse_policy("hourly", {**POLICY, "targets": ["backup1", "dr.site-2"]}, "api")
    assert spec.targets == ("backup1", "dr.site-2")
    assert policy_json(spec)["targets"] == ["backup1", "dr.site-2"]
    assert parse_policy("hourly", policy_json(spec), "api") == spec
    assert parse_policy("hourly", POLICY, "api").targets == ()
    check_targets(spec, {"backup1", "dr.site-2", "other"})


@pytest.mark.parametrize("value, key, words", [
    ("backup1", "targets", "must be a list"),
    ([7], "targets[0]", "name of a [targets.NAME]"),
    (["ok", "a b"], "targets[1]", "name of a [targets.NAME]"),
    (["", "ok"], "targets[0]", "name of a [targets.NAME]"),
    (["b" * 65], "targets[0]", "1-64"),
    (["b", "b"], "targets[1]", "listed twice"),
])
def test_a_bad_targets_value_is_refused_naming_the_key(value: object, key: str, words: str) -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy("hourly", {**POLICY, "targets": value}, "api")
    assert caught.value.key == key and words in caught.value.message, caught.value


def test_an_unknown_target_is_an_error_naming_the_key_and_the_known_ones() -> None:
    spec = parse_policy("hourly", {**POLICY, "targets": ["backup1", "nope"]}, "api")
    with pytest.raises(PolicyError) as caught:
        check_targets(spec, {"backup1", "backup2"})
    assert caught.value.key == "targets[1]"
    assert caught.value.message == "no target 'nope' in the config ([targets.NAME]; known: backup1, backup2)"


def test_the_config_refuses_a_file_policy_naming_a_target_it_does_not_define() -> None:
    table = {"policies": {"hourly": {**POLICY, "targets": ["backup1"]}}}
    with pytest.raises(ConfigError) as caught:
        build(table, {}, "cfg")
    assert str(caught.value) == ("cfg: policies.hourly.targets[0]: no target 'backup1' in the config "
                                 "([targets.NAME]; known: none configured)")
    cfg = build({**table, "targets": {"backup1": TARGET}}, {}, "cfg")
    assert cfg.policies["hourly"].targets == ("backup1",)

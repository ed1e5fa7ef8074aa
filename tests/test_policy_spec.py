"""Policy specs: every key parsed, every bad value refused naming its key, the JSON form round-trips."""

from __future__ import annotations

import pytest

from snapd.core.policies.spec import (
    Grid, MinFree, PolicyError, Target, check_policies, parse_policy, policy_json, render_alias, resolve)
from snapd.http import admin, validation

CID = "507f1f77bcf86cd799439011"
ISSUE_EXAMPLE = {
    "schedule": "0 * * * *",
    "timezone": "Europe/Berlin",
    "jitter": "5m",
    "applies_to": ["project:web", "pool:btrfs:/var/lib/containers", f"container:{CID}"],
    "keep_last": 3,
    "keep": {"hourly": 24, "daily": 7, "weekly": 4, "monthly": 12, "yearly": 0},
    "max_age": "400d",
    "alias": "auto-{policy}",
    "min_free": "10%",
}


def policy(**changes: object) -> dict:
    data = {"schedule": "0 * * * *", "applies_to": ["project:web"], "keep_last": 3}
    data.update(changes)
    return {k: v for k, v in data.items() if v is not ...}


def test_the_issue_example_parses() -> None:
    spec = parse_policy("hourly", ISSUE_EXAMPLE, "file")
    assert spec.schedule.text == "0 * * * *" and spec.schedule.interval is None
    assert spec.timezone == "Europe/Berlin"
    assert spec.jitter == 300
    assert spec.applies_to == (Target("project", "web"), Target("pool", "btrfs:/var/lib/containers"),
                               Target("container", CID))
    assert spec.keep_last == 3
    assert spec.keep == Grid(hourly=24, daily=7, weekly=4, monthly=12, yearly=0)
    assert spec.max_age == 400 * 86400
    assert spec.alias == "auto-{policy}"
    assert spec.min_free == MinFree(10.0, None)
    assert spec.freeze is None and spec.source == "file"


def test_defaults() -> None:
    spec = parse_policy("p", policy(), "api")
    assert (spec.timezone, spec.jitter, spec.keep, spec.max_age, spec.alias, spec.min_free, spec.freeze) == \
        ("UTC", 0, Grid(), None, None, None, None)


@pytest.mark.parametrize("data", [
    ISSUE_EXAMPLE,
    policy(schedule="every 15m", jitter="90s", min_free="5G", freeze=True, max_age="2w"),
    policy(schedule="every 2s", keep_last=0, keep={"daily": 1}, min_free=12345, freeze=False),
    policy(schedule="*/5  1-3 * * MON", alias="{container}@{time}", timezone="America/New_York"),
    policy(applies_to=["pool:zfs:tank/containers/", "pool:overlay:/srv//c/"], jitter=0),
    policy(min_free="12.345%"),
    policy(min_free="0.1%"),
])
def test_json_form_round_trips(data: dict) -> None:
    spec = parse_policy("p-1", data, "api")
    again = parse_policy("p-1", policy_json(spec), "api")
    assert again == spec
    assert policy_json(again) == policy_json(spec)


@pytest.mark.parametrize("changes, canonical", [
    ({"schedule": "every 900s"}, "every 15m"),
    ({"schedule": "every 3600s"}, "every 1h"),
    ({"schedule": "  0   *  * * *  "}, "0 * * * *"),
    ({"applies_to": ["pool:overlay:/srv//c/"]}, "pool:overlay:/srv/c"),
    ({"applies_to": ["pool:zfs:tank/c/"]}, "pool:zfs:tank/c"),
    ({"applies_to": ["container:507F1F77BCF86CD799439011"]}, f"container:{CID}"),
])
def test_canonical_forms(changes: dict, canonical: str) -> None:
    out = policy_json(parse_policy("p", policy(**changes), "api"))
    assert canonical in (out["schedule"], *out["applies_to"])


@pytest.mark.parametrize("value, expected", [
    ("10%", MinFree(10.0, None)),
    ("0.5%", MinFree(0.5, None)),
    ("5G", MinFree(None, 5 << 30)),
    ("5GiB", MinFree(None, 5 << 30)),
    ("5GB", MinFree(None, 5 * 1000**3)),
    ("500M", MinFree(None, 500 << 20)),
    ("1.5T", MinFree(None, int(1.5 * (1 << 40)))),
    ("4096", MinFree(None, 4096)),
    (4096, MinFree(None, 4096)),
])
def test_min_free_forms(value: object, expected: MinFree) -> None:
    assert parse_policy("p", policy(min_free=value), "api").min_free == expected


BAD = [
    # (changes, key)
    ({"colour": "red"}, "colour"),
    ({"schedule": ...}, "schedule"),
    ({"applies_to": ...}, "applies_to"),
    ({"schedule": "61 * * * *"}, "schedule"),
    ({"schedule": "* * * *"}, "schedule"),
    ({"schedule": "0 0 * * * *"}, "schedule"),
    ({"schedule": "0 0 30 2 *"}, "schedule"),
    ({"schedule": "@hourly"}, "schedule"),
    ({"schedule": "every 0s"}, "schedule"),
    ({"schedule": "every 0m"}, "schedule"),
    ({"schedule": "every -5m"}, "schedule"),
    ({"schedule": "every 5"}, "schedule"),
    ({"schedule": "every 1y"}, "schedule"),
    ({"schedule": "every"}, "schedule"),
    ({"schedule": ""}, "schedule"),
    ({"schedule": 5}, "schedule"),
    ({"schedule": None}, "schedule"),
    ({"schedule": "0 * * * *\n"}, None),  # trailing whitespace is fine
    ({"timezone": "Mars/Olympus"}, "timezone"),
    ({"timezone": "../../etc/passwd"}, "timezone"),
    ({"timezone": "Europe"}, "timezone"),
    ({"timezone": ""}, "timezone"),
    ({"timezone": 1}, "timezone"),
    ({"jitter": "-5m"}, "jitter"),
    ({"jitter": "5 minutes"}, "jitter"),
    ({"jitter": -1}, "jitter"),
    ({"jitter": True}, "jitter"),
    ({"jitter": 1.5}, "jitter"),
    ({"schedule": "every 1m", "jitter": "1m"}, "jitter"),
    ({"applies_to": []}, "applies_to"),
    ({"applies_to": "project:web"}, "applies_to"),
    ({"applies_to": ["web"]}, "applies_to[0]"),
    ({"applies_to": ["project:web", "container:xyz"]}, "applies_to[1]"),
    ({"applies_to": ["container:507f1f77bcf86cd79943901"]}, "applies_to[0]"),
    ({"applies_to": ["project:"]}, "applies_to[0]"),
    ({"applies_to": ["project:-web"]}, "applies_to[0]"),
    ({"applies_to": ["pool:ext4:/x"]}, "applies_to[0]"),
    ({"applies_to": ["pool:btrfs"]}, "applies_to[0]"),
    ({"applies_to": ["pool:btrfs:"]}, "applies_to[0]"),
    ({"applies_to": ["pool:btrfs:/a\u2028b"]}, "applies_to[0]"),
    ({"applies_to": ["host:x"]}, "applies_to[0]"),
    ({"applies_to": [7]}, "applies_to[0]"),
    ({"applies_to": ["project:web", "project:web"]}, "applies_to[1]"),
    ({"keep_last": -1}, "keep_last"),
    ({"keep_last": True}, "keep_last"),
    ({"keep_last": 2.0}, "keep_last"),
    ({"keep_last": "3"}, "keep_last"),
    ({"keep_last": 10**9}, "keep_last"),
    ({"keep_last": 0}, "keep_last"),  # keeps nothing
    ({"keep_last": 0, "keep": {"hourly": 0}}, "keep_last"),
    ({"keep": {"hourly": -1}}, "keep.hourly"),
    ({"keep": {"daily": True}}, "keep.daily"),
    ({"keep": {"weekly": 1.5}}, "keep.weekly"),
    ({"keep": {"monthly": "12"}}, "keep.monthly"),
    ({"keep": {"yearly": None}}, "keep.yearly"),
    ({"keep": {"minutely": 5}}, "keep.minutely"),
    ({"keep": [24]}, "keep"),
    ({"max_age": "0s"}, "max_age"),
    ({"max_age": 0}, "max_age"),
    ({"max_age": "400"}, "max_age"),
    ({"max_age": "1000000w"}, "max_age"),
    ({"alias": ""}, "alias"),
    ({"alias": 5}, "alias"),
    ({"alias": "auto-{name}"}, "alias"),
    ({"alias": "auto-{policy!r}"}, "alias"),
    ({"alias": "auto-{time:%Y}"}, "alias"),
    ({"alias": "auto-{policy"}, "alias"),
    ({"alias": "auto-}"}, "alias"),
    ({"alias": "a\u202eb"}, "alias"),
    ({"alias": "x" * 100 + "{policy}"}, "alias"),
    ({"min_free": "0%"}, "min_free"),
    ({"min_free": "100%"}, "min_free"),
    ({"min_free": "ten%"}, "min_free"),
    ({"min_free": "5Q"}, "min_free"),
    ({"min_free": 0}, "min_free"),
    ({"min_free": -5}, "min_free"),
    ({"min_free": True}, "min_free"),
    ({"min_free": 1.5}, "min_free"),
    ({"min_free": "0G"}, "min_free"),
    ({"freeze": "yes"}, "freeze"),
    ({"freeze": 1}, "freeze"),
]


@pytest.mark.parametrize("changes, key", BAD, ids=[f"{i}-{k}" for i, (_, k) in enumerate(BAD)])
def test_bad_input_names_the_key(changes: dict, key: str | None) -> None:
    data = policy(**changes)
    if key is None:
        parse_policy("p", data, "api")
        return
    with pytest.raises(PolicyError) as info:
        parse_policy("p", data, "api")
    assert info.value.key == key
    assert info.value.message and str(info.value).startswith(f"{key}: ")


@pytest.mark.parametrize("name", ["", "Hourly", "-x", "_x", "a" * 64, "a b", "a.b", "ä", None])
def test_bad_names(name: object) -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy(name, policy(), "api")  # type: ignore[arg-type]
    assert info.value.key == "name"


def test_good_names() -> None:
    for name in ("a", "0", "a" * 63, "nightly-db_2"):
        assert parse_policy(name, policy(), "file").name == name


def test_not_a_table() -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy("p", ["schedule"], "api")  # type: ignore[arg-type]
    assert info.value.key == "policy"


def test_id_and_project_rules_are_the_api_rules() -> None:
    from snapd.core.policies import spec
    assert spec.CONTAINER_ID.pattern == validation.CONTAINER_ID.pattern
    assert spec.PROJECT.pattern == admin.PROJECT.pattern
    assert spec.MAX_ALIAS == validation.MAX_ALIAS


def make(name: str, *targets: str) -> object:
    return parse_policy(name, policy(applies_to=list(targets)), "api")


def test_two_policies_claiming_one_target_are_refused() -> None:
    a = make("a", "project:web", f"container:{CID}")
    b = make("b", "project:db", f"container:{CID.upper()}")
    with pytest.raises(PolicyError) as info:
        check_policies([b, a])
    assert info.value.key == "applies_to"
    assert "'a'" in info.value.message and "'b'" in info.value.message and CID in info.value.message


def test_one_pool_root_is_one_claim_whatever_the_backend() -> None:
    with pytest.raises(PolicyError):
        check_policies([make("a", "pool:auto:/srv/c"), make("b", "pool:btrfs:/srv/c/")])


def test_distinct_claims_pass() -> None:
    check_policies([make("a", "project:web", "pool:btrfs:/srv/a"), make("b", "project:db", "pool:btrfs:/srv/b"),
                    make("c", f"container:{CID}")])


def test_most_specific_target_wins() -> None:
    by_pool = make("by-pool", "pool:btrfs:/srv/c")
    by_project = make("by-project", "project:web")
    by_id = make("by-id", f"container:{CID}")
    specs = [by_pool, by_project, by_id]
    assert resolve(specs, CID.upper(), "web", "btrfs:/srv/c") is by_id
    other = "0" * 24
    assert resolve(specs, other, "web", "btrfs:/srv/c") is by_project
    assert resolve(specs, other, "db", "btrfs:/srv/c") is by_pool
    assert resolve(specs, other, None, "btrfs:/srv/c") is by_pool
    assert resolve(specs, other, None, "btrfs:/srv/other") is None
    assert resolve(specs, other, None, "zfs:srv/c") is None
    assert resolve([make("auto", "pool:auto:/srv/c")], other, None, "btrfs:/srv/c").name == "auto"


def test_render_alias() -> None:
    spec = parse_policy("hourly", policy(alias="auto-{policy}-{container}-{time}", timezone="Europe/Berlin"),
                        "api")
    # 2024-05-01 11:00 UTC is 13:00 in Berlin (CEST)
    assert render_alias(spec, CID.upper(), 1714561200) == f"auto-hourly-{CID}-2024-05-01T13:00"
    assert render_alias(parse_policy("p", policy(), "api"), CID, 0) is None
    braces = parse_policy("p", policy(alias="{{x}} {policy}"), "api")
    assert render_alias(braces, CID, 0) == "{x} p"

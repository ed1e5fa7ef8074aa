"""Holds and snapshot details through the API, on every backend: the new routes, their
errors, and the reference's routes left exactly as they were."""

from __future__ import annotations

import json

import pytest

from .client import snaps
from .daemon import DaemonProcess
from .digest import write_tree
from .harness import PoolHarness, new_cid
from .waiting import until

SEVEN = {"name", "alias", "created_at", "last_used_at", "expires_at", "stateful", "size"}


@pytest.fixture
def container(pool: PoolHarness) -> str:
    cid = new_cid()
    write_tree(pool.make_container(cid), {"etc/hostname": "one\n"})
    return cid


def create(daemon: DaemonProcess, cid: str, body: dict | None = None) -> dict:
    r = daemon.unix.post(snaps(cid), body)
    assert r.status == 200, r.body
    return r.data["snapshot"]


def details(cid: str) -> str:
    return f"/api/v1/containers/{cid}/snapshot-details"


def test_hold_answers_the_detail_and_release_undoes_it(daemon: DaemonProcess, container: str) -> None:
    snap = create(daemon, container, {"alias": "base"})
    r = daemon.unix.request("PUT", snaps(container, snap["name"], "/hold"), {"reason": "pre-upgrade ☃"})
    assert r.status == 200, r.body
    assert r.body["message"] == "Snapshot held successfully"
    held = r.data["snapshot"]
    assert {k: held[k] for k in SEVEN} == snap
    assert (held["policy"], held["hold"]["reason"], held["keep"]) == (None, "pre-upgrade ☃", ["hold: pre-upgrade ☃"])
    assert held["hold"]["since"] >= snap["created_at"]
    assert daemon.unix.get(snaps(container, snap["name"], "/detail")).data["snapshot"] == held
    r = daemon.unix.delete(snaps(container, snap["name"], "/hold"))
    assert (r.status, r.body["message"], r.data["snapshot"]["hold"]) == (200, "Snapshot released successfully", None)
    assert r.data["snapshot"]["keep"] == ["manual"]  # released: taken by request, kept until its expiry
    r = daemon.unix.delete(snaps(container, snap["name"], "/hold"))  # not held: 200, nothing changes
    assert (r.status, r.data["snapshot"]["hold"]) == (200, None)


def test_a_held_snapshot_refuses_delete_and_allows_restore(daemon: DaemonProcess, container: str,
                                                           pool: PoolHarness) -> None:
    snap = create(daemon, container)
    assert daemon.unix.request("PUT", snaps(container, snap["name"], "/hold"), {"reason": "keep me"}).status == 200
    r = daemon.unix.delete(snaps(container, snap["name"]))
    assert r.status == 409
    assert r.body == {"statusCode": 409, "error": "Conflict", "message": f"snapshot {snap['name']} is held: keep me",
                      "details": [{"field": "hold", "reason": "held: keep me; release it first"}]}
    write_tree(pool.container_path(container), {"etc/hostname": "two\n"})
    assert daemon.unix.patch(snaps(container, snap["name"])).status == 200
    assert (pool.container_path(container) / "etc/hostname").read_text() == "one\n"
    assert daemon.unix.delete(snaps(container, snap["name"], "/hold")).status == 200
    assert daemon.unix.delete(snaps(container, snap["name"])).status == 200


def test_the_reaper_passes_over_a_held_snapshot(daemon: DaemonProcess, container: str) -> None:
    held = create(daemon, container, {"expiry": 1 / 86400})
    free = create(daemon, container, {"expiry": 1 / 86400})
    assert daemon.unix.request("PUT", snaps(container, held["name"], "/hold"), {"reason": "r"}).status == 200
    until(lambda: daemon.unix.get(snaps(container, free["name"])).status == 404, "the free one expired")
    assert daemon.unix.get(snaps(container, held["name"])).status == 200
    assert daemon.unix.delete(snaps(container, held["name"], "/hold")).status == 200
    until(lambda: daemon.unix.get(snaps(container, held["name"])).status == 404, "released, it expired")


def test_snapshot_details_list_every_snapshot_newest_first(daemon: DaemonProcess, container: str) -> None:
    old, new = create(daemon, container), create(daemon, container, {"alias": "n"})
    daemon.unix.request("PUT", snaps(container, old["name"], "/hold"), {"reason": "r"})
    r = daemon.unix.get(details(container))
    assert (r.status, r.body["message"]) == (200, "Snapshot details retrieved successfully")
    assert (r.data["container_id"], r.data["project_id"]) == (container, None)
    listed = r.data["snapshots"]
    assert [s["name"] for s in listed] == [new["name"], old["name"]]
    assert [s["hold"] and s["hold"]["reason"] for s in listed] == [None, "r"]
    assert {k: listed[0][k] for k in SEVEN} == new
    # the reference's routes still show exactly the seven fields
    assert all(set(s) == SEVEN for s in daemon.unix.get(snaps(container)).data["snapshots"])
    assert set(daemon.unix.get(snaps(container, old["name"])).data["snapshot"]) == SEVEN


@pytest.mark.parametrize("raw, reason", [
    (b"", "required: why the snapshot is held"),
    (b"{}", "required: why the snapshot is held"),
    (b'{"reason": null}', "must be a string"),
    (b'{"reason": 5}', "must be a string or null"),
    (b'{"reason": ""}', "must be 1 to 200 characters"),
    (b'{"reason": "' + b"x" * 201 + b'"}', "must be 1 to 200 characters"),
    (b'{"reason": "a\\nb"}', "contains U+000A"),
    (b'{"reason": "a\\u202eb"}', "contains U+202E"),
    (b'{"reason": "a\\ud800"}', "must be valid Unicode (no lone surrogates)"),
])
def test_bad_hold_reasons_are_a_400_naming_reason(daemon: DaemonProcess, container: str, raw: bytes,
                                                   reason: str) -> None:
    snap = create(daemon, container)
    r = daemon.unix.request("PUT", snaps(container, snap["name"], "/hold"), raw=raw)
    assert (r.status, r.body["message"]) == (400, "Invalid request payload"), r.body
    assert [d["field"] for d in r.body["details"]] == ["reason"]
    assert r.body["details"][0]["reason"].startswith(reason)
    assert daemon.unix.get(snaps(container, snap["name"], "/detail")).data["snapshot"]["hold"] is None


def test_a_reason_of_200_characters_is_accepted(daemon: DaemonProcess, container: str) -> None:
    snap = create(daemon, container)
    r = daemon.unix.request("PUT", snaps(container, snap["name"], "/hold"), {"reason": "é" * 200})
    assert (r.status, r.data["snapshot"]["hold"]["reason"]) == (200, "é" * 200)


def test_other_hold_inputs(daemon: DaemonProcess, container: str) -> None:
    snap = create(daemon, container)
    hold = snaps(container, snap["name"], "/hold")
    r = daemon.unix.request("PUT", hold, {"reason": "r", "until": 5})
    assert (r.status, [d["field"] for d in r.body["details"]]) == (400, ["until"])
    r = daemon.unix.request("DELETE", hold, {"reason": "r"})
    assert (r.status, [d["field"] for d in r.body["details"]]) == (400, ["reason"])
    assert daemon.unix.request("PUT", snaps(container, "snap-19990101-000000", "/hold"),
                               {"reason": "r"}).status == 404
    assert daemon.unix.request("PUT", snaps(container, ".bad", "/hold"), {"reason": "r"}).status == 400
    assert daemon.unix.request("PUT", snaps(new_cid(), snap["name"], "/hold"), {"reason": "r"}).status == 404


def test_the_new_routes_leave_the_reference_routes_answers_alone(daemon: DaemonProcess, container: str) -> None:
    snap = create(daemon, container)
    for word in ("hold", "detail"):  # a snapshot named like the new route segments: looked up, not found
        r = daemon.unix.get(snaps(container, word))
        assert (r.status, r.body["message"]) == (404, "Container or snapshot not found")
        r = daemon.unix.delete(snaps(container, word))
        assert (r.status, r.body["message"]) == (404, "Container or snapshot not found")
    r = daemon.unix.get(snaps(container, snap["name"], "/hold"))
    assert (r.status, r.headers["allow"]) == (405, "DELETE,PUT")
    r = daemon.unix.request("PATCH", snaps(container, snap["name"], "/detail"))
    assert (r.status, r.headers["allow"]) == (405, "GET")
    r = daemon.unix.get(snaps(container, snap["name"], "/alias"))
    assert (r.status, r.headers["allow"]) == (405, "PATCH")
    assert daemon.unix.get(snaps(container, snap["name"], "/holds")).status == 404
    assert daemon.unix.get(snaps(container, snap["name"], "/hold/x")).status == 404


def test_on_zfs_a_hold_is_a_zfs_hold(daemon: DaemonProcess, container: str, pool: PoolHarness) -> None:
    """The hold is ZFS's own too: `zfs destroy` refuses the snapshot until the release, and
    `zfs holds` lists the daemon's tag where it can list (zfs-fuse has `zfs hold`, not the
    listing, which wants a pyzfs it does not ship)."""
    if pool.kind != "zfs":
        pytest.skip("zfs holds exist on ZFS only")
    from backends.zfs import HOLD_PROPERTY, HOLD_TAG

    from .harness.zfs import _run

    snap = create(daemon, container)
    ref = f"{pool.dataset(container)}@{snap['name']}"  # type: ignore[attr-defined]
    assert daemon.unix.request("PUT", snaps(container, snap["name"], "/hold"), {"reason": "r"}).status == 200
    def holds() -> str | None:
        listed = _run("zfs", "holds", "-H", ref, check=False)
        return listed.stdout if listed.returncode == 0 else None

    assert holds() is None or HOLD_TAG in holds()  # type: ignore[operator]
    assert _run("zfs", "destroy", ref, check=False).returncode != 0
    recorded = pool.props([ref], HOLD_PROPERTY)[ref][HOLD_PROPERTY]  # type: ignore[attr-defined]
    assert json.loads(recorded)["reason"] == "r" and recorded.isascii()
    again = daemon.unix.request("PUT", snaps(container, snap["name"], "/hold"), {"reason": "another"})
    assert again.status == 200  # the tag is there already: no error
    assert daemon.unix.delete(snaps(container, snap["name"], "/hold")).status == 200
    assert holds() is None or HOLD_TAG not in holds()  # type: ignore[operator]
    assert pool.props([ref], HOLD_PROPERTY)[ref][HOLD_PROPERTY] == "-"  # type: ignore[attr-defined]
    assert daemon.unix.delete(snaps(container, snap["name"])).status == 200  # zfs destroy: released
    assert _run("zfs", "list", ref, check=False).returncode != 0


def test_a_newer_held_snapshot_outlives_a_restore_to_an_older_one(daemon: DaemonProcess, container: str,
                                                                   pool: PoolHarness) -> None:
    """On ZFS the restore clones and promotes: the held snapshot moves to a hidden holder
    dataset, its zfs hold and properties with it."""
    old = create(daemon, container)
    write_tree(pool.container_path(container), {"etc/hostname": "two\n"})
    new = create(daemon, container)
    assert daemon.unix.request("PUT", snaps(container, new["name"], "/hold"), {"reason": "newest"}).status == 200
    assert daemon.unix.patch(snaps(container, old["name"])).status == 200
    detail = daemon.unix.get(snaps(container, new["name"], "/detail")).data["snapshot"]
    assert detail["hold"]["reason"] == "newest"
    assert daemon.unix.delete(snaps(container, new["name"])).status == 409
    assert daemon.unix.patch(snaps(container, new["name"])).status == 200  # and back to the held one
    assert (pool.container_path(container) / "etc/hostname").read_text() == "two\n"
    assert daemon.unix.delete(snaps(container, new["name"], "/hold")).status == 200
    for snap in (new, old):
        assert daemon.unix.delete(snaps(container, snap["name"])).status == 200

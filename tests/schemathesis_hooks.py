"""Schemathesis hooks for tests/test_openapi.py: the few failures it must not count, each justified.

Loaded by the `schemathesis` CLI (config `hooks = "tests.schemathesis_hooks"`);
each rule below drops one narrowly described kind of failure and nothing else.
The run's JSON report counts what was dropped (`filtered`).
"""

from __future__ import annotations

from typing import Any

import schemathesis
from schemathesis.core.failures import Failure

from snapd.http.validation import CONTAINER_ID, SNAPSHOT_NAME


ACCEPTED_NEGATIVE = "ST201"
"""negative_data_rejection: a request the schema forbids got a 2xx."""
REJECTED_POSITIVE = "ST202"
"""positive_data_acceptance: a request the schema allows got a 4xx."""


def _operation_id(case: Any) -> str | None:
    return case.operation.definition.raw.get("operationId")


def _after_names_a_missing_snapshot(failure: Failure, case: Any, response: Any) -> bool:
    """`after` may be a snapshot name, but only one that exists: a schema cannot say "exists",
    so a well-formed name of no snapshot is (rightly) a 400 to a request the schema allows."""
    if failure.code != REJECTED_POSITIVE or _operation_id(case) != "listSnapshots":
        return False
    after = (case.query or {}).get("after")
    if not isinstance(after, str) or not SNAPSHOT_NAME.fullmatch(after) or response.status_code != 400:
        return False
    details = response.json().get("details", [])
    return [d["field"] for d in details if d["field"] != "request_id"] == ["after"]


@schemathesis.hook
def filter_failure(context: Any, failure: Failure, case: Any, response: Any) -> bool:
    """Keep every failure but the one described above."""
    return not _after_names_a_missing_snapshot(failure, case, response)


EXAMPLE_CONTAINER = "507f1f77bcf86cd799439011"
"""The one container of the test's pool (the document's example id)."""


@schemathesis.hook
def map_path_parameters(context: Any, path_parameters: dict[str, Any] | None) -> dict[str, Any] | None:
    """Point half the well-formed container ids (a fixed half: even ones) at the pool's container,
    so every phase, the stateful one included, reaches real snapshots and not only 403/404.
    A valid id for another valid id changes no check's verdict; malformed ids are left alone."""
    cid = (path_parameters or {}).get("id")
    if isinstance(cid, str) and CONTAINER_ID.fullmatch(cid) and int(cid, 16) % 2 == 0:
        return {**path_parameters, "id": EXAMPLE_CONTAINER}  # type: ignore[dict-item]
    return path_parameters

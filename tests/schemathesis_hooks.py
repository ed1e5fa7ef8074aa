"""Schemathesis hooks for tests/test_openapi.py: the few failures it must not count, each justified.

Loaded by the `schemathesis` CLI (config `hooks = "tests.schemathesis_hooks"`);
each rule below drops one narrowly described kind of failure and nothing else.
The run's JSON report counts what was dropped (`filtered`).
"""

from __future__ import annotations

import os
from typing import Any

import schemathesis
from schemathesis.core.failures import Failure

from snapd.http.admin_policies import POLICY_NAME
from snapd.http.replication import JOB_ID
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


def _policy_the_schema_cannot_judge(failure: Failure, case: Any, response: Any) -> bool:
    """A policy body of the right shape may still be no policy: a cron expression that does not
    parse, a zone not in the time zone database, targets that match no container or that another
    policy claims, rules across keys (it must keep something; jitter shorter than the interval; an
    alias's rendered length).  The server says so as a 400 "Invalid policy" naming the key; body
    shapes (unknown keys, types, ranges) stay "Invalid request payload" and are still checked."""
    if failure.code != REJECTED_POSITIVE or _operation_id(case) != "putPolicy" or response.status_code != 400:
        return False
    return response.json().get("message") == "Invalid policy"


def _bytes_that_are_no_stream(failure: Failure, case: Any, response: Any) -> bool:
    """An import body is any bytes to the schema; only a portable stream (magic, header,
    frames, a checksum over them, for the route's container) is one, which no generator
    makes by chance: the server says so as a 400 "Invalid snapshot stream"."""
    if failure.code != REJECTED_POSITIVE or _operation_id(case) != "importSnapshot" or response.status_code != 400:
        return False
    return response.json().get("message") == "Invalid snapshot stream"


@schemathesis.hook
def filter_failure(context: Any, failure: Failure, case: Any, response: Any) -> bool:
    """Keep every failure but those described above."""
    return not (_after_names_a_missing_snapshot(failure, case, response)
                or _policy_the_schema_cannot_judge(failure, case, response)
                or _bytes_that_are_no_stream(failure, case, response))


EXAMPLE_CONTAINER = "507f1f77bcf86cd799439011"
"""The one container of the test's pool (the document's example id)."""


JOB_ENV = "SNAPD_TEST_REPLICATION_JOB"
"""A replication job the test started before the run (half the well-formed job ids point at it)."""


EXAMPLE_TARGET = "closed"
"""The config file's replication target in the test's daemon (nothing listens there: jobs fail at once)."""


EXAMPLE_POLICY = "example"
"""The config file's policy in the test's daemon (read-only through the API: a PUT or DELETE is a 409)."""
SEEDED_POLICY = "seeded"
"""A policy the test sets through the API before the run (so a DELETE can succeed)."""


@schemathesis.hook
def map_path_parameters(context: Any, path_parameters: dict[str, Any] | None) -> dict[str, Any] | None:
    """Point half the well-formed container ids (a fixed half: even ones) at the pool's container,
    so every phase, the stateful one included, reaches real snapshots and not only 403/404; and
    every well-formed policy name at one of the two policies there: the config file's or one set
    through the API (by the parity of the name's code points); half the well-formed job ids at
    the replication job the test started.
    A valid id or name for another changes no check's verdict; malformed ones are left alone."""
    cid = (path_parameters or {}).get("id")
    if isinstance(cid, str) and CONTAINER_ID.fullmatch(cid) and int(cid, 16) % 2 == 0:
        return {**path_parameters, "id": EXAMPLE_CONTAINER}  # type: ignore[dict-item]
    job = (path_parameters or {}).get("job")
    if isinstance(job, str) and JOB_ID.fullmatch(job) and int(job, 16) % 2 == 0 \
            and os.environ.get(JOB_ENV):
        return {**path_parameters, "job": os.environ[JOB_ENV]}  # type: ignore[dict-item]
    policy = (path_parameters or {}).get("policy")
    if isinstance(policy, str) and POLICY_NAME.fullmatch(policy):
        mapped = EXAMPLE_POLICY if sum(map(ord, policy)) % 2 else SEEDED_POLICY
        return {**path_parameters, "policy": mapped}  # type: ignore[dict-item]
    return path_parameters


@schemathesis.hook
def map_body(context: Any, body: Any) -> Any:
    """Point half the replication requests with a well-formed container id (a fixed half: even
    ones) at the pool's container and the configured target, so a job really starts (and fails,
    nothing listening there) rather than every body naming nothing here (a 404)."""
    operation = getattr(context, "operation", None)
    definition = getattr(operation, "definition", None)
    if definition is None or definition.raw.get("operationId") != "startReplication" or not isinstance(body, dict):
        return body
    cid = body.get("container")
    if isinstance(cid, str) and CONTAINER_ID.fullmatch(cid) and int(cid, 16) % 2 == 0 \
            and isinstance(body.get("target"), str):
        return {**body, "container": EXAMPLE_CONTAINER, "target": EXAMPLE_TARGET}
    return body

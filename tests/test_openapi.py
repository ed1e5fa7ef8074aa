"""The OpenAPI document: valid, complete, and true of a live daemon under schemathesis."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from openapi_spec_validator import validate

from snapd.http.admin import TOKEN_ID
from snapd.http.admin_policies import POLICY_NAME
from snapd.http.openapi import openapi_document
from snapd.http.replication import JOB_ID
from snapd.http.validation import CONTAINER_ID, SNAPSHOT_NAME

from .daemon import DaemonProcess
from .schemathesis_hooks import EXAMPLE_POLICY, EXAMPLE_TARGET, JOB_ENV, SEEDED_POLICY
from .digest import write_tree

ROOT = Path(__file__).resolve().parent.parent
BASE = "/api/v1/containers/{id}/snapshots"
ADMIN = "/api/v1/admin"
FORMATS = "/api/v1/containers/{id}/import-formats"
OPERATION_IDS = {
    (BASE, "get"): "listSnapshots",
    (BASE, "post"): "createSnapshot",
    (BASE + "/{name}", "get"): "getSnapshot",
    (BASE + "/{name}", "patch"): "restoreSnapshot",
    (BASE + "/{name}/alias", "patch"): "updateSnapshotAlias",
    (BASE + "/{name}", "delete"): "deleteSnapshot",
    (BASE + "/{name}/hold", "put"): "holdSnapshot",
    (BASE + "/{name}/hold", "delete"): "releaseSnapshot",
    (BASE + "/{name}/detail", "get"): "getSnapshotDetail",
    (BASE + "/{name}/tree", "get"): "getSnapshotTree",
    (BASE + "/{name}/file", "get"): "getSnapshotFile",
    (BASE + "/{name}/diff", "get"): "getSnapshotDiff",
    (BASE + "/{name}/restore-paths", "post"): "restoreSnapshotPaths",
    ("/api/v1/containers/{id}/snapshot-details", "get"): "listSnapshotDetails",
    (f"{ADMIN}/tokens", "get"): "listTokens",
    (f"{ADMIN}/tokens", "post"): "createToken",
    (f"{ADMIN}/tokens/{{token_id}}", "delete"): "revokeToken",
    (f"{ADMIN}/containers/{{id}}", "get"): "getContainer",
    (f"{ADMIN}/containers/{{id}}/project", "put"): "setContainerProject",
    (f"{ADMIN}/containers/{{id}}/layout", "put"): "setContainerLayout",
    (f"{ADMIN}/reconcile", "post"): "reconcilePools",
    (f"{ADMIN}/expiry", "get"): "getExpiryPlan",
    (f"{ADMIN}/status", "get"): "getStatus",
    (f"{ADMIN}/policies", "get"): "listPolicies",
    (f"{ADMIN}/policies/plan", "get"): "getPolicyPlan",
    (f"{ADMIN}/policies/{{policy}}", "get"): "getPolicy",
    (f"{ADMIN}/policies/{{policy}}", "put"): "putPolicy",
    (f"{ADMIN}/policies/{{policy}}", "delete"): "deletePolicy",
    ("/metrics", "get"): "getMetrics",
    ("/api/v1/openapi.json", "get"): "getOpenApiDocument",
    (BASE + "/{name}/export", "get"): "exportSnapshot",
    (BASE + "/import", "post"): "importSnapshot",
    (FORMATS, "get"): "getImportFormats",
    (f"{ADMIN}/replications", "post"): "startReplication",
    (f"{ADMIN}/replications", "get"): "listReplications",
    (f"{ADMIN}/replications/{{job}}", "get"): "getReplication",
}


def _operations(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            yield path, method, op


def test_document_is_valid_and_names_tags_and_secures_every_operation() -> None:
    doc = openapi_document()
    validate(doc)  # openapi-spec-validator: raises on any violation of OpenAPI 3.1
    assert {(p, m): op.get("operationId") for p, m, op in _operations(doc)} == OPERATION_IDS
    tags = {t["name"] for t in doc["tags"]}
    assert tags == {"snapshots", "holds", "admin", "policies", "meta", "files", "transfer", "replication"}
    scheme = doc["components"]["securitySchemes"]["bearerAuth"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    assert "SO_PEERCRED" in scheme["description"]  # what OpenAPI cannot express is said in words
    for path, method, op in _operations(doc):
        assert len(op["tags"]) == 1 and op["tags"][0] in tags, (path, method)
        assert op["security"] == [{"bearerAuth": []}], (path, method)
        assert "401" in op["responses"], (path, method)
    assert {t for p, m, o in _operations(doc) if p.startswith(ADMIN) for t in o["tags"]} == {"admin", "policies",
                                                                                         "replication"}


SAMPLES = ["507f1f77bcf86cd799439011", "507F1F77BCF86CD799439011", "507f1f77bcf86cd79943901",
           "507f1f77bcf86cd7994390111", "507f1f77bcf86cd79943901g", "3f9a1c0d2b7e", "3F9A1C0D2B7E",
           "snap-20250115-103000", "snap-20250115-103000-2", "a", "a" * 128, "a" * 129, ".hidden", "-x",
           "..", "a/b", "a b", "a\n", "é", "", "hourly", "plan", "plans", "x" * 63, "x" * 64, "a_b", "A"]


@pytest.mark.parametrize("name, server_regex", [
    ("id", CONTAINER_ID), ("name", SNAPSHOT_NAME), ("token_id", TOKEN_ID), ("policy", POLICY_NAME),
    ("job", JOB_ID),
])
def test_path_parameters_carry_the_servers_own_patterns(name: str, server_regex: re.Pattern[str]) -> None:
    seen = 0
    for path, method, op in _operations(openapi_document()):
        for param in op.get("parameters", []):
            if param["in"] == "path" and param["name"] == name:
                seen += 1
                # ECMA-262's `$` is the very end; Python's also matches before a final newline
                pattern = re.compile(param["schema"]["pattern"].removesuffix("$") + r"\Z")
                for sample in SAMPLES:
                    documented = pattern.search(sample) is not None
                    assert documented == bool(server_regex.fullmatch(sample)), (path, method, sample)
    assert seen


def _inline_objects(node: Any, where: str, top: bool = False) -> Iterator[str]:
    """Places in a schema where an object is described inline rather than by a named $ref."""
    if isinstance(node, dict):
        if not top and (node.get("properties") or node.get("type") in ("object", ["object", "null"])) \
                and "additionalProperties" in node and node.get("maxProperties") != 0:
            yield where
        for key, value in node.items():
            yield from _inline_objects(value, f"{where}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _inline_objects(value, f"{where}/{i}")


def _timestamps(node: Any, where: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        for key, value in node.get("properties", {}).items():
            if key.endswith("_at") or key in ("now", "until", "time", "next_expiry"):
                yield f"{where}/{key}", value
        for key, value in node.items():
            yield from _timestamps(value, f"{where}/{key}")
    elif isinstance(node, list):
        for value in node:
            yield from _timestamps(value, where)


def test_objects_are_named_schemas_and_timestamps_are_date_time() -> None:
    doc = openapi_document()
    inline = [w for name, schema in doc["components"]["schemas"].items()
              for w in _inline_objects(schema, name, top=True)]
    inline += list(_inline_objects(doc["paths"], "paths"))
    assert inline == []
    stamps = dict(_timestamps(doc["components"]["schemas"]))
    assert len(stamps) >= 12
    assert {w for w, s in stamps.items() if s.get("format") != "date-time"} == set()


# -- schemathesis against a live daemon ----------------------------------------------------------

CID = "507f1f77bcf86cd799439011"
"""The container every example in the document names (the reference's own example id)."""
PROJECT = "web"


@dataclass
class Env:
    d: DaemonProcess
    tokens: dict[str, str]
    job: str
    """A replication job (failed: its target is closed), for GET .../replications/{job}."""


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    """A daemon on a small overlay pool: one tiny container, an admin and a project token."""
    base = tmp_path_factory.mktemp("openapi")
    pool = base / "pool"
    write_tree(pool / CID, {"etc/hostname": "web-1\n"})
    config = base / "config.toml"  # a policy of the file: GET finds it, PUT and DELETE are 409s
    (base / "token").write_text("csd_x\n")  # a target where nothing listens: its jobs fail at once
    config.write_text(f'[policies.{EXAMPLE_POLICY}]\nschedule = "0 0 1 1 *"\n'
                      f'applies_to = ["pool:overlay:{pool}"]\nkeep_last = 1\n'
                      f'[targets.{EXAMPLE_TARGET}]\nurl = "http://127.0.0.1:1"\ntoken_file = "{base / "token"}"\n')
    d = DaemonProcess(base / "d", [f"overlay:{pool}"], tcp=True, extra=["--config", str(config)]).start()
    try:
        tokens = {
            "admin": d.unix.post(f"{ADMIN}/tokens", {"admin": True}).data["secret"],
            "project": d.unix.post(f"{ADMIN}/tokens", {"project": PROJECT}).data["secret"],
        }
        r = d.unix.post(f"{ADMIN}/replications", {"container": CID, "target": EXAMPLE_TARGET})
        assert r.status == 202, r.body
        yield Env(d, tokens, r.data["job"]["id"])
    finally:
        assert d.stop() == 0, d.log_text()[-3000:]


CONFIG = """\
hooks = "tests.schemathesis_hooks"
workers = 1
request-timeout = 30

[generation]
max-examples = {max_examples}
deterministic = true

[checks]
enabled = true

[warnings]
fail-on = {fail_on}
"""
WARNINGS = ["missing_auth", "missing_test_data", "base_url_mismatch", "validation_mismatch",
            "missing_deserializer", "unused_openapi_auth", "unsupported_regex", "method_not_allowed",
            "unmatched_filter", "unresolvable_reference", "rate_limited", "dictionary_mismatch"]
MAX_EXAMPLES = 15
"""Per operation and phase: both runs together take about a minute on a loaded 2-core machine."""


@pytest.mark.parametrize("who", ["project", "admin"])
def test_schemathesis_finds_nothing(env: Env, who: str, tmp_path: Path) -> None:
    """Every schemathesis check, every phase (examples, coverage, fuzzing, stateful), generated
    deterministically, over TCP with a bearer token; a project token's run needs the container
    labelled with its project (the admin run relabels it at random)."""
    r = env.d.unix.request("PUT", f"{ADMIN}/containers/{CID}/project", {"project": PROJECT})
    assert r.status == 200, r.body
    r = env.d.unix.request("PUT", f"{ADMIN}/policies/{SEEDED_POLICY}",
                           {"schedule": "0 0 1 1 *", "applies_to": [f"project:{PROJECT}"], "keep_last": 1})
    assert r.status == 200, r.body
    config = tmp_path / "schemathesis.toml"
    # every warning fails the run; but a project token's 403 on admin routes and the policy
    # bodies the schema cannot judge (schemathesis_hooks) are checked below
    lenient = {"project": "missing_auth", "admin": "validation_mismatch"}[who]
    fail_on = [w for w in WARNINGS if w not in (lenient, "validation_mismatch")]  # checked below
    config.write_text(CONFIG.format(max_examples=MAX_EXAMPLES, fail_on=json.dumps(fail_on)))
    report = tmp_path / "report.json"
    proc = subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "run",
         f"http://127.0.0.1:{env.d.port}/api/v1/openapi.json",
         "-H", f"Authorization: Bearer {env.tokens[who]}",
         "--report", "json", "--report-json-path", str(report), "--no-color"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT), JOB_ENV: env.job},  # its cache lands in tmp_path
        capture_output=True, text=True, timeout=300,
    )
    out = proc.stdout[-20000:] + proc.stderr[-5000:]
    assert report.exists(), out
    result = json.loads(report.read_text())
    warnings = {k: v for k, v in result["warnings"].items() if v}
    # an import body is bytes to the schema, and only a real stream is one (schemathesis_hooks)
    mismatched = set(warnings.pop("validation_mismatch", [])) - {f"POST {BASE}/import"}
    if mismatched:
        warnings["validation_mismatch"] = sorted(mismatched)
    if who == "project":  # admin routes, /metrics and import are 403 to a project token, as documented
        forbidden = set(warnings.pop("missing_auth", []))
        assert forbidden == {f"{m.upper()} {p}" for (p, m) in OPERATION_IDS
                             if p.startswith(ADMIN) or p in ("/metrics", BASE + "/import", FORMATS)}, out
    else:  # well-shaped policy bodies that are no policy (a cron that does not parse, ...)
        assert set(warnings.pop("validation_mismatch", [])) <= {f"PUT {ADMIN}/policies/{{policy}}"}, out
    assert (proc.returncode, result["failures"], result["errors"], warnings) == (0, [], [], {}), out
    ops = result["operations"]
    assert ops["tested"] == ops["selected"] == ops["total"] == len(OPERATION_IDS) - 1, out  # not the document
    accepted = {op: sum(p["accepted"] for p in phases.values())
                for op, phases in result["valid_rates"].items()}
    for op in ("GET " + BASE, "POST " + BASE, "PATCH " + BASE + "/{name}/alias"):
        assert accepted.get(op, 0) > 0, (op, accepted)  # the run reached the container itself
    if who == "admin":  # and set and deleted policies
        for op in (f"PUT {ADMIN}/policies/{{policy}}", f"DELETE {ADMIN}/policies/{{policy}}"):
            assert accepted.get(op, 0) > 0, (op, accepted)

"""Snapshot policies (admin only): list, show, set (or dry-run), delete, and the plan.

    GET    /api/v1/admin/policies                   every policy, with its last run and next snapshot
    GET    /api/v1/admin/policies/plan?hours=N[&container=ID]
                                                    per container under a policy: next snapshots and,
                                                    per snapshot, what keeps it or when and why it goes
    GET    /api/v1/admin/policies/{policy}          one policy
    PUT    /api/v1/admin/policies/{policy}[?dry_run=true[&hours=N]]
                                                    set it (the body is the policy, the config file's
                                                    keys); a dry run returns the plan and changes nothing
    DELETE /api/v1/admin/policies/{policy}          forget it (its snapshots stay)

A bad body is a 400 whose `details` name the key (`keep.hourly`); a policy of
the config file is read-only here (409 naming the file).
"""

from __future__ import annotations

import math
import re
from typing import Any

from aiohttp import web

from snapd.core.errors import NotFound
from snapd.core.policies.spec import KEYS, NAME, PolicyError
from snapd.core.policy_book import RESERVED, FileOwned
from snapd.core.policy_service import MAX_HOURS, PolicyService
from snapd.http.auth import require_admin
from snapd.http.envelope import ApiError, ok, read_body
from snapd.http.validation import CONTAINER_ID, InvalidInput, parse_body

POLICIES_KEY = web.AppKey("policies", PolicyService)
POLICY_NAME_RULE = "^[a-z0-9][a-z0-9_-]{0,62}$"
POLICY_NAME = re.compile("(?!(?:" + "|".join(RESERVED) + r")\Z)" + NAME.pattern)
"""A policy name in a path: spec.NAME, and not a reserved one (`plan` is the plan route)."""
ROUTE = "/api/v1/admin/policies"
DEFAULT_HOURS = 24.0


def _policies(request: web.Request) -> PolicyService:
    require_admin(request)
    service = request.app.get(POLICIES_KEY)
    if service is None:
        raise ApiError(404, "Policies are not available in this application")
    return service


def _name(request: web.Request) -> str:
    name = request.match_info["policy"]
    if not POLICY_NAME.fullmatch(name):
        raise ApiError(400, "Invalid policy name",
                       [{"field": "policy", "reason": f"must match {POLICY_NAME_RULE}"
                                                     f" ({', '.join(RESERVED)}: reserved)", "value": name[:80]}])
    return name


def _bad_query(field: str, reason: str) -> ApiError:
    return ApiError(400, "Invalid query parameter", [{"field": field, "reason": reason}])


def _hours(request: web.Request) -> float:
    raw = request.rel_url.query.get("hours")
    if raw is None:
        return DEFAULT_HOURS
    try:
        hours = float(raw)
    except ValueError:
        hours = math.nan
    if not 0 < hours <= MAX_HOURS:  # NaN fails too
        raise _bad_query("hours", f"a number of hours above 0, at most {MAX_HOURS:g}")
    return hours


def _flag(request: web.Request, key: str) -> bool:
    raw = request.rel_url.query.get(key)
    if raw is None:
        return False
    if raw not in ("true", "false"):
        raise _bad_query(key, "true or false")
    return raw == "true"


def _policy_error(exc: PolicyError) -> ApiError:
    return ApiError(400, "Invalid policy", [{"field": exc.key, "reason": exc.message}])


def _file_owned(exc: FileOwned) -> ApiError:
    return ApiError(409, f"Policy {exc.name} is defined in {exc.source}; change it there and reload",
                    [{"field": "policy", "reason": str(exc)}])


async def list_policies(request: web.Request) -> web.Response:
    return ok("Policies retrieved successfully", {"policies": _policies(request).list()})


async def get_policy(request: web.Request) -> web.Response:
    service = _policies(request)
    try:
        return ok("Policy retrieved successfully", service.get(_name(request)))
    except NotFound:
        raise ApiError(404, "Policy not found") from None


async def put_policy(request: web.Request) -> web.Response:
    service = _policies(request)
    name = _name(request)
    dry_run = _flag(request, "dry_run")
    try:
        body: dict[str, Any] = parse_body(await read_body(request), set(KEYS))
    except InvalidInput as exc:
        raise ApiError(400, "Invalid request payload", exc.details) from None
    try:
        result = await service.put(name, body, dry_run=dry_run, hours=_hours(request))
    except PolicyError as exc:
        raise _policy_error(exc) from None
    except FileOwned as exc:
        raise _file_owned(exc) from None
    message = ("Policy dry run: nothing was changed" if dry_run
               else "Policy created successfully" if result["created"] else "Policy updated successfully")
    return ok(message, result)


async def delete_policy(request: web.Request) -> web.Response:
    service = _policies(request)
    name = _name(request)
    try:
        gone = await service.delete(name)
    except NotFound:
        raise ApiError(404, "Policy not found") from None
    except FileOwned as exc:
        raise _file_owned(exc) from None
    return ok("Policy deleted successfully", {"policy": gone})


async def policy_plan(request: web.Request) -> web.Response:
    service = _policies(request)
    hours = _hours(request)
    container = request.rel_url.query.get("container")
    if container is not None:
        if not CONTAINER_ID.fullmatch(container):
            raise _bad_query("container", "24 hexadecimal characters")
        container = container.lower()
    try:
        plan = await service.plan(hours, container)
    except NotFound:
        raise ApiError(404, "Container not found or under no policy") from None
    return ok("Policy plan retrieved successfully", plan)


def add_policy_routes(app: web.Application) -> None:
    app.router.add_get(ROUTE, list_policies, allow_head=False)
    app.router.add_get(f"{ROUTE}/plan", policy_plan, allow_head=False)
    # {policy} never matches the reserved names: a PUT or DELETE of /policies/plan is a 405 (Allow: GET)
    one = "{policy:(?!(?:" + "|".join(RESERVED) + ")$)[^{}/]+}"
    app.router.add_get(f"{ROUTE}/{one}", get_policy, allow_head=False)
    app.router.add_put(f"{ROUTE}/{one}", put_policy)
    app.router.add_delete(f"{ROUTE}/{one}", delete_policy)

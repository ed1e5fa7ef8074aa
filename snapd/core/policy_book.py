"""Every snapshot policy the daemon follows, from its two sources.

The config file's `[policies.NAME]` tables (read-only through the API; a
reload re-reads them) and the policies set through the admin routes (kept
in the store's `policies` table, so they survive restarts).  Both are one
set: no two policies may claim the same target (spec.check_policies), and
a name belongs to one source.  A file policy whose name was set through the
API before takes the name over: the stored one is dropped, with a warning
(the way to move a policy from the API into the file).

Changes are checked whole before anything is kept: a bad one changes
nothing.  Listeners (the scheduler) hear of every change.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from snapd.core.clock import Clock
from snapd.core.policies.spec import (PolicyError, PolicySpec, check_policies, check_targets, parse_policy,
                                      policy_json)

if TYPE_CHECKING:
    from snapd.core.store import Store

log = logging.getLogger("snapd.policies")

RESERVED = ("plan",)
"""Names no policy may take: `GET /api/v1/admin/policies/plan` is the plan."""


class FileOwned(Exception):
    """A change through the API to a policy the config file defines (409)."""

    def __init__(self, name: str, source: str) -> None:
        super().__init__(f"policy {name} is defined in {source}; change it there and reload (SIGHUP)")
        self.name = name
        self.source = source


@dataclass(frozen=True)
class Entry:
    """One policy and where it comes from."""

    spec: PolicySpec
    updated_at: float | None
    """When it was last set through the API (None for file policies)."""


class PolicyBook:
    """The policies of one daemon: the file's and the API's (stored)."""

    def __init__(self, store: Store, clock: Clock, file_specs: Mapping[str, PolicySpec] | None = None,
                 file_source: str = "the config file") -> None:
        self.store = store
        self.clock = clock
        self.file_source = file_source
        self._listeners: list[Callable[[], None]] = []
        self.known_targets: Callable[[], Collection[str]] | None = None
        """The configured replication targets' names (None: not checked); the server sets it."""
        self._api: dict[str, Entry] = {}
        for row in store.policy_rows():
            try:
                spec = parse_policy(row["name"], json.loads(row["body"]), "api")
            except (PolicyError, ValueError) as exc:  # written by another version: set aside, loudly
                log.error("stored policy %s cannot be read and is not followed: %s", row["name"], exc)
                continue
            self._api[spec.name] = Entry(spec, _s(row["updated_at"]))
        self._file: dict[str, Entry] = {}
        self.set_file(file_specs or {})

    # -- reading ---------------------------------------------------------------------

    def entries(self) -> list[Entry]:
        """Every policy, by name."""
        return sorted([*self._file.values(), *self._api.values()], key=lambda e: e.spec.name)

    def specs(self) -> list[PolicySpec]:
        return [e.spec for e in self.entries()]

    def get(self, name: str) -> Entry | None:
        return self._file.get(name) or self._api.get(name)

    # -- changing ----------------------------------------------------------------------

    def on_change(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def _changed(self) -> None:
        for listener in self._listeners:
            listener()

    def check_file(self, specs: Mapping[str, PolicySpec]) -> None:
        """PolicyError (naming the key) if set_file(specs) would be refused; changes nothing."""
        for name in specs:
            _check_name(name)
        _check([*specs.values(), *(e.spec for n, e in self._api.items() if n not in specs)])

    def check_api_targets(self, known: Collection[str]) -> None:
        """PolicyError (naming `NAME.targets[i]`) if a policy set through the API names a
        replication target not in `known` (a reload that drops a target still in use)."""
        for entry in self._api.values():
            try:
                check_targets(entry.spec, known)
            except PolicyError as exc:
                raise PolicyError(f"{entry.spec.name}.{exc.key}", f"{exc.message}; the policy was set through "
                                                                  "the API: change it first") from None

    def set_file(self, specs: Mapping[str, PolicySpec]) -> None:
        """The config file's policies (start-up and reload).  Raises PolicyError (naming
        the key) and changes nothing when they clash with the API's."""
        self.check_file(specs)
        for name in [n for n in specs if n in self._api]:
            log.warning("policy %s is now defined in %s; the one set through the API is dropped",
                        name, self.file_source)
            self.store.policy_delete(name)
            del self._api[name]
        self._file = {n: Entry(s, None) for n, s in specs.items()}
        self._changed()

    def proposal(self, name: str, data: Mapping[str, object]) -> tuple[PolicySpec, list[PolicySpec]]:
        """What a PUT of `data` as policy `name` would make: the policy and the whole new
        set.  Raises PolicyError (400) or FileOwned (409); changes nothing."""
        if name in self._file:
            raise FileOwned(name, self.file_source)
        _check_name(name)
        spec = parse_policy(name, data, "api")
        if self.known_targets is not None:
            check_targets(spec, self.known_targets())
        others = [e.spec for e in self.entries() if e.spec.name != name]
        _check([*others, spec])
        return spec, sorted([*others, spec], key=lambda s: s.name)

    def put(self, spec: PolicySpec) -> Entry:
        """Keep `spec` (from proposal()) as an API policy, in the store."""
        if spec.name in self._file:
            raise FileOwned(spec.name, self.file_source)
        _check([*(e.spec for e in self.entries() if e.spec.name != spec.name), spec])
        now = self.clock.now()
        self.store.policy_put(spec.name, json.dumps(policy_json(spec), sort_keys=True), round(now * 1000))
        entry = self._api[spec.name] = Entry(spec, now)
        self._changed()
        return entry

    def delete(self, name: str) -> Entry | None:
        """Forget the API policy `name` (None if there is none).  Its snapshots stay:
        they are no policy's to prune any more, so only their own expiry governs them."""
        if name in self._file:
            raise FileOwned(name, self.file_source)
        entry = self._api.pop(name, None)
        if entry is not None:
            self.store.policy_delete(name)
            self._changed()
        return entry


def _check_name(name: str) -> None:
    if name in RESERVED:
        raise PolicyError("name", f"{name!r} is reserved (GET /api/v1/admin/policies/plan is the plan)")


def _check(specs: Iterable[PolicySpec]) -> None:
    check_policies(list(specs))


def _s(ms: int | None) -> float | None:
    return None if ms is None else ms / 1000.0

"""The daemon's state directory: the store in it, and what is built on the store.

The composition root (snapd/server.py) opens a `State` and asks it for the
service and the token records, so nothing outside the core holds the store.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from backends.base import Backend

from snapd.core.clock import Clock
from snapd.core.policies.spec import PolicySpec
from snapd.core.policy_book import PolicyBook
from snapd.core.service import SnapshotService
from snapd.core.store import Store, StoreError, private_dir
from snapd.core.tokens import Tokens

STORE_FILE = "snapd.db"


class StateError(Exception):
    """The state directory or its store cannot be used."""


class State:
    """The open store of one state directory."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir
        try:
            private_dir(state_dir)
            self._store = Store(state_dir / STORE_FILE)
        except StoreError as exc:
            raise StateError(str(exc)) from None
        except OSError as exc:
            raise StateError(f"state_dir {state_dir}: {exc.strerror or exc}") from None

    def service(self, backends: list[Backend], clock: Clock, metrics: Any = None) -> SnapshotService:
        return SnapshotService(self._store, backends, clock, metrics)

    def policies(self, clock: Clock, file_specs: dict[str, PolicySpec], file_source: str) -> PolicyBook:
        """The policies: the config file's and those kept in the store (PolicyError on a clash)."""
        return PolicyBook(self._store, clock, file_specs, file_source)

    def tokens(self) -> Tokens:
        return Tokens(self._store)

    def close(self) -> None:
        self._store.close()

"""One structured log line per operation: kind, container, snapshot, duration, outcome.

Pure logging (no HTTP): the service uses it; the request id, when there is
one, is added to every line by logsetup.RequestIdFilter.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any


class OperationLog:
    """Context manager for one line per operation, with duration and outcome.

        with OperationLog(log, "create", container=cid) as op:
            ...
            op.fields["snapshot"] = name
    """

    def __init__(self, logger: logging.Logger, kind: str, **fields: Any) -> None:
        self.logger = logger
        self.kind = kind
        self.fields = fields

    def __enter__(self) -> OperationLog:
        self.start = time.monotonic()
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is None:
            outcome = "ok"
        else:
            outcome = "cancelled" if isinstance(exc, asyncio.CancelledError) else "error"
        fields = {"op": self.kind, **self.fields, "duration_ms": elapsed_ms(self.start), "outcome": outcome}
        if exc is not None:
            fields["error"] = str(exc) or type(exc).__name__
        self.logger.log(logging.INFO if exc is None else logging.WARNING, "operation",
                        extra={"fields": fields})


def elapsed_ms(start: float) -> float:
    """Milliseconds since `start` (a time.monotonic() value)."""
    return round((time.monotonic() - start) * 1000, 3)

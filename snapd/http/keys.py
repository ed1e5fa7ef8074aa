"""The aiohttp application's typed keys (what route modules share)."""

from __future__ import annotations

from aiohttp import web

from snapd.core.service import SnapshotService

SERVICE_KEY = web.AppKey("service", SnapshotService)

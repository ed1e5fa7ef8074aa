"""A small client for the daemon's Unix socket (used by the CLI)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp


class ClientError(Exception):
    """The daemon could not be reached or did not answer with JSON."""


async def _call(socket_path: Path, method: str, path: str, body: Any = None) -> tuple[int, dict]:
    connector = aiohttp.UnixConnector(path=str(socket_path))
    try:
        async with aiohttp.ClientSession(connector=connector) as session:
            async with session.request(
                method,
                f"http://localhost{path}",
                json=body,
                timeout=aiohttp.ClientTimeout(total=600),
            ) as resp:
                text = await resp.text()
                try:
                    return resp.status, json.loads(text)
                except json.JSONDecodeError:
                    raise ClientError(f"daemon answered {resp.status} without JSON: {text[:200]}") from None
    except aiohttp.ClientConnectionError as exc:
        raise ClientError(f"cannot reach the daemon at {socket_path}: {exc}") from None


def call(socket_path: Path, method: str, path: str, body: Any = None) -> tuple[int, dict]:
    """One request; returns (status, decoded JSON envelope)."""
    return asyncio.run(_call(socket_path, method, path, body))

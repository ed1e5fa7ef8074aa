"""A small client for the daemon's Unix socket (used by the CLI)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, BinaryIO

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


async def _stream(socket_path: Path, path: str, out: BinaryIO) -> tuple[int, dict]:
    connector = aiohttp.UnixConnector(path=str(socket_path))
    try:
        async with aiohttp.ClientSession(connector=connector) as session:
            async with session.get(f"http://localhost{path}", timeout=aiohttp.ClientTimeout(total=None)) as resp:
                if resp.status != 200:
                    text = await resp.text()
                    try:
                        return resp.status, json.loads(text)
                    except json.JSONDecodeError:
                        raise ClientError(f"daemon answered {resp.status} without JSON: {text[:200]}") from None
                async for chunk in resp.content.iter_chunked(1 << 20):
                    out.write(chunk)
                out.flush()
                return 200, {}
    except aiohttp.ClientConnectionError as exc:
        raise ClientError(f"cannot reach the daemon at {socket_path}: {exc}") from None


def stream(socket_path: Path, path: str, out: BinaryIO) -> tuple[int, dict]:
    """A GET whose success body is bytes, written to `out`; returns (status, error envelope or {})."""
    return asyncio.run(_stream(socket_path, path, out))


def call(socket_path: Path, method: str, path: str, body: Any = None) -> tuple[int, dict]:
    """One request; returns (status, decoded JSON envelope)."""
    return asyncio.run(_call(socket_path, method, path, body))

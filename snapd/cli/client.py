"""A small client for the daemon's Unix socket (used by the CLI)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp


class ClientError(Exception):
    """The daemon could not be reached or did not answer with JSON."""


async def _call(socket_path: Path, method: str, path: str, body: Any = None, *, data: Any = None,
                headers: dict[str, str] | None = None, timeout: float | None = 600) -> tuple[int, dict]:
    connector = aiohttp.UnixConnector(path=str(socket_path))
    try:
        async with aiohttp.ClientSession(connector=connector) as session:
            async with session.request(
                method,
                f"http://localhost{path}",
                json=body,
                data=data,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as resp:
                return resp.status, await _envelope(resp)
    except aiohttp.ClientConnectionError as exc:
        raise ClientError(f"cannot reach the daemon at {socket_path}: {exc}") from None


async def _envelope(resp: aiohttp.ClientResponse) -> dict:
    text = await resp.text()
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise ClientError(f"daemon answered {resp.status} without JSON: {text[:200]}") from None


def call(socket_path: Path, method: str, path: str, body: Any = None) -> tuple[int, dict]:
    """One request; returns (status, decoded JSON envelope)."""
    return asyncio.run(_call(socket_path, method, path, body))


CHUNK = 1 << 20


async def _download(socket_path: Path, path: str, write: Any) -> tuple[int, dict | None]:
    """GET `path`; a 200 body goes to `write` chunk by chunk (returns (200, None)), an error's
    envelope is returned.  ClientError when the daemon is unreachable or the body is cut off."""
    connector = aiohttp.UnixConnector(path=str(socket_path))
    try:
        async with aiohttp.ClientSession(connector=connector) as session:
            async with session.get(f"http://localhost{path}", timeout=aiohttp.ClientTimeout(total=None)) as resp:
                if resp.status != 200:
                    return resp.status, await _envelope(resp)
                while True:  # a chunk at a time: fewer hops to the writing thread
                    parts, size = [], 0
                    while size < CHUNK and (data := await resp.content.read(CHUNK - size)):
                        parts.append(data)
                        size += len(data)
                    if not parts:
                        return 200, None
                    await asyncio.to_thread(write, b"".join(parts))
    except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
        raise ClientError(f"the stream from the daemon at {socket_path} was cut off: {exc}") from None


async def _upload(socket_path: Path, path: str, read: Any) -> tuple[int, dict]:
    """POST the bytes `read(n)` yields (until b"") as a chunked body; the answer's envelope."""
    async def body() -> Any:
        while chunk := await asyncio.to_thread(read, CHUNK):
            yield chunk

    return await _call(socket_path, "POST", path, data=body(), timeout=None,
                       headers={"Content-Type": "application/vnd.container-snapd.stream"})


def download(socket_path: Path, path: str, write: Any) -> tuple[int, dict | None]:
    """Stream a GET's body into `write` (see _download)."""
    return asyncio.run(_download(socket_path, path, write))


def upload(socket_path: Path, path: str, read: Any) -> tuple[int, dict]:
    """Stream `read`'s bytes as a POST body (see _upload)."""
    return asyncio.run(_upload(socket_path, path, read))

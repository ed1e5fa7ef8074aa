"""A small client for the daemon's Unix socket (used by the CLI)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, BinaryIO

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


async def _stream(socket_path: Path, path: str, out: BinaryIO) -> tuple[int, dict]:
    connector = aiohttp.UnixConnector(path=str(socket_path))
    try:
        async with aiohttp.ClientSession(connector=connector) as session:
            async with session.get(f"http://localhost{path}", timeout=aiohttp.ClientTimeout(total=None)) as resp:
                if resp.status != 200:
                    return resp.status, await _envelope(resp)
                while True:  # a MiB at a time: few hops to the writing thread
                    parts, size = [], 0
                    while size < CHUNK and (data := await resp.content.read(CHUNK - size)):
                        parts.append(data)
                        size += len(data)
                    if not parts:
                        break
                    await asyncio.to_thread(out.write, b"".join(parts))
                await asyncio.to_thread(out.flush)
                return 200, {}
    except aiohttp.ClientConnectionError as exc:
        raise ClientError(f"cannot reach the daemon at {socket_path}, or it broke off: {exc}") from None
    except aiohttp.ClientPayloadError as exc:
        raise ClientError(f"the daemon at {socket_path} broke off the answer: {exc}") from None


async def _upload(socket_path: Path, path: str, read: Any) -> tuple[int, dict]:
    """POST the bytes `read(n)` yields (until b"") as a chunked body; the answer's envelope."""
    async def body() -> Any:
        while chunk := await asyncio.to_thread(read, CHUNK):
            yield chunk

    return await _call(socket_path, "POST", path, data=body(), timeout=None,
                       headers={"Content-Type": "application/vnd.container-snapd.stream"})


def stream(socket_path: Path, path: str, out: BinaryIO) -> tuple[int, dict]:
    """A GET whose success body is bytes, written to `out` as it arrives; returns (status,
    error envelope or {}).  ClientError when the body is cut off."""
    return asyncio.run(_stream(socket_path, path, out))


def upload(socket_path: Path, path: str, read: Any) -> tuple[int, dict]:
    """Stream `read`'s bytes as a POST body (see _upload)."""
    return asyncio.run(_upload(socket_path, path, read))

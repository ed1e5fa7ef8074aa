"""A small client for the daemon: its Unix socket, or a URL with a bearer token (used by the CLI)."""

from __future__ import annotations

import asyncio
import json
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import aiohttp


class ClientError(Exception):
    """The daemon could not be reached or did not answer with JSON."""


@dataclass(frozen=True)
class Endpoint:
    """Where the daemon answers: a Unix socket, or a URL (`http(s)://host[:port]`, TCP), and
    the bearer token to send, if any."""

    socket: Path | None = None
    url: str | None = None
    token: str | None = None
    tls_ca: Path | None = None

    def __str__(self) -> str:
        return self.url if self.url else str(self.socket)

    @property
    def base(self) -> str:
        return self.url.rstrip("/") if self.url else "http://localhost"

    def session(self) -> aiohttp.ClientSession:
        """A session that reaches the daemon (the caller closes it)."""
        if self.url is None:
            connector: aiohttp.BaseConnector = aiohttp.UnixConnector(path=str(self.socket))
        else:
            tls = ssl.create_default_context(cafile=str(self.tls_ca) if self.tls_ca else None)
            connector = aiohttp.TCPConnector(ssl=tls)
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        return aiohttp.ClientSession(connector=connector, headers=headers)


async def _call(endpoint: Endpoint, method: str, path: str, body: Any = None, *, data: Any = None,
                headers: dict[str, str] | None = None, timeout: float | None = 600) -> tuple[int, dict]:
    try:
        async with endpoint.session() as session:
            async with session.request(
                method,
                endpoint.base + path,
                json=body,
                data=data,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as resp:
                return resp.status, await _envelope(resp)
    except aiohttp.ClientConnectionError as exc:
        raise ClientError(f"cannot reach the daemon at {endpoint}: {exc}") from None


async def _envelope(resp: aiohttp.ClientResponse) -> dict:
    text = await resp.text()
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise ClientError(f"daemon answered {resp.status} without JSON: {text[:200]}") from None


def call(endpoint: Endpoint, method: str, path: str, body: Any = None) -> tuple[int, dict]:
    """One request; returns (status, decoded JSON envelope)."""
    return asyncio.run(_call(endpoint, method, path, body))


CHUNK = 1 << 20


async def _stream(endpoint: Endpoint, path: str, out: BinaryIO) -> tuple[int, dict]:
    try:
        async with endpoint.session() as session:
            async with session.get(endpoint.base + path, timeout=aiohttp.ClientTimeout(total=None)) as resp:
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
        raise ClientError(f"cannot reach the daemon at {endpoint}, or it broke off: {exc}") from None
    except aiohttp.ClientPayloadError as exc:
        raise ClientError(f"the daemon at {endpoint} broke off the answer: {exc}") from None


async def _upload(endpoint: Endpoint, path: str, read: Any) -> tuple[int, dict]:
    """POST the bytes `read(n)` yields (until b"") as a chunked body; the answer's envelope."""
    async def body() -> Any:
        while chunk := await asyncio.to_thread(read, CHUNK):
            yield chunk

    return await _call(endpoint, "POST", path, data=body(), timeout=None,
                       headers={"Content-Type": "application/vnd.container-snapd.stream"})


def stream(endpoint: Endpoint, path: str, out: BinaryIO) -> tuple[int, dict]:
    """A GET whose success body is bytes, written to `out` as it arrives; returns (status,
    error envelope or {}).  ClientError when the body is cut off."""
    return asyncio.run(_stream(endpoint, path, out))


def upload(endpoint: Endpoint, path: str, read: Any) -> tuple[int, dict]:
    """Stream `read`'s bytes as a POST body (see _upload)."""
    return asyncio.run(_upload(endpoint, path, read))

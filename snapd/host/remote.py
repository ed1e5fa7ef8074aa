"""A replication target over HTTP: another container-snapd's TCP listener (aiohttp client).

The token is read from the target's token_file for each job (so a rotated token is
used at once); https uses the target's tls_ca, or the system's CAs without one.
Every failure becomes a RemoteError saying what the target did or why it could not
be reached; the target's own error envelope (message and details) is quoted.
"""

from __future__ import annotations

import json
import ssl
from datetime import datetime
from typing import AsyncIterator
from urllib.parse import quote

import aiohttp

from backends.portable import MEDIA_TYPE
from snapd.core.replication import RemoteError
from snapd.core.replication_plan import Accepts, Snap
from snapd.core.settings import Target

CONNECT_TIMEOUT = 10.0
"""Seconds to reach the target before the job fails."""
ANSWER_TIMEOUT = 600.0
"""Seconds the target may take to answer once a whole stream is sent (it checks and renames)."""


def _when(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class HttpRemote:
    """The target `target`, spoken to over HTTP(S) with its token."""

    def __init__(self, target: Target) -> None:
        self.target = target

    def _token(self) -> str:
        where = f"targets.{self.target.name}.token_file {self.target.token_file}"
        try:
            with open(self.target.token_file) as f:
                token = f.read().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise RemoteError(f"cannot read {where}: {getattr(exc, 'strerror', None) or exc}") from None
        if not token or not token.isascii() or not token.isprintable() or any(c.isspace() for c in token):
            raise RemoteError(f"{where} holds no token (one line, no spaces)")
        return token

    def _session(self, read_timeout: float) -> aiohttp.ClientSession:
        ssl_ctx: ssl.SSLContext | bool = False
        if self.target.url.startswith("https://"):
            try:
                ssl_ctx = ssl.create_default_context(cafile=self.target.tls_ca)
            except (OSError, ssl.SSLError) as exc:
                raise RemoteError(f"cannot load targets.{self.target.name}.tls_ca {self.target.tls_ca}: "
                                  f"{exc}") from None
        return aiohttp.ClientSession(
            base_url=self.target.url,
            headers={"Authorization": f"Bearer {self._token()}"},
            connector=aiohttp.TCPConnector(ssl=ssl_ctx),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT, sock_read=read_timeout),
        )

    async def _refusal(self, resp: aiohttp.ClientResponse, what: str) -> RemoteError:
        try:
            text = (await resp.text(errors="replace"))[:2000]
        except (aiohttp.ClientError, OSError, TimeoutError):  # answered, then cut off: the status says enough
            text = ""
        try:
            body = json.loads(text)
            reason = body.get("message") or text
            details = "; ".join(f"{d.get('field')}: {d.get('reason')}" for d in body.get("details") or []
                                if d.get("field") != "request_id")
        except (ValueError, AttributeError):
            reason, details = text.strip() or resp.reason, ""
        return RemoteError(f"target {self.target.name} refused {what}: {resp.status} {reason}"
                           + (f" ({details})" if details else ""))

    def _unreachable(self, exc: BaseException, what: str) -> RemoteError:
        return RemoteError(f"target {self.target.name} ({self.target.url}) did not answer {what}: "
                           f"{type(exc).__name__}: {exc}".rstrip(": "))

    async def snapshots(self, cid: str) -> list[Snap]:
        what = f"the snapshot list of {cid}"
        try:
            async with self._session(60.0) as session, \
                    session.get(f"/api/v1/containers/{quote(cid)}/snapshots") as resp:
                if resp.status == 404:
                    return []
                if resp.status != 200:
                    raise await self._refusal(resp, what)
                data = (await resp.json())["data"]["snapshots"]
                return [Snap(s["name"], _when(s["created_at"])) for s in data]
        except RemoteError:
            raise
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError, KeyError, TypeError) as exc:
            raise self._unreachable(exc, what) from None

    async def formats(self, cid: str) -> Accepts:
        what = f"the import formats of {cid}"
        try:
            async with self._session(60.0) as session, \
                    session.get(f"/api/v1/containers/{quote(cid)}/import-formats") as resp:
                if resp.status in (404, 405):  # a daemon older than native streams: portable only
                    return Accepts()
                if resp.status != 200:
                    raise await self._refusal(resp, what)
                data = (await resp.json())["data"]
                kinds, bases = data["formats"], data["native_bases"]
                if not all(isinstance(k, str) for k in [*kinds, *bases]):
                    raise ValueError("formats and native_bases are lists of strings")
                return Accepts(tuple(kinds), frozenset(bases))
        except RemoteError:
            raise
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError, KeyError, TypeError) as exc:
            raise self._unreachable(exc, what) from None

    async def receive(self, cid: str, body: AsyncIterator[bytes]) -> None:
        what = f"a snapshot stream of {cid}"
        try:
            async with self._session(ANSWER_TIMEOUT) as session, \
                    session.post(f"/api/v1/containers/{quote(cid)}/snapshots/import", data=body,
                                 headers={"Content-Type": MEDIA_TYPE}) as resp:
                if resp.status != 200:
                    raise await self._refusal(resp, what)
        except RemoteError:
            raise
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            cause = exc.__cause__ or exc.__context__
            if isinstance(cause, RemoteError):
                raise cause from None
            raise self._unreachable(exc, what) from None

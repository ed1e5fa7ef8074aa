"""Who is calling, and what they may touch.

Unix socket: the peer's credentials (SO_PEERCRED) make uid 0, the daemon's
own uid and members of the admin group admins; anyone else needs a bearer
token.  TCP: a bearer token, always.  A project token sees only containers
labelled with its project (and, when it names containers, only those); a
read-only token only reads.
"""

from __future__ import annotations

import grp
import os
import pwd
import socket
import struct
from dataclasses import dataclass

from aiohttp import web

from snapd.core.clock import Clock
from snapd.http.envelope import AUTH_MESSAGE, ApiError, Handler
from snapd.core.tokens import Token, Tokens


@dataclass(frozen=True)
class Peer:
    """The other end of a connection, as far as the transport tells."""

    transport: str  # "unix" | "tcp"
    uid: int | None = None
    gid: int | None = None
    pid: int | None = None


@dataclass(frozen=True)
class Principal:
    """An authenticated caller."""

    peer: Peer
    admin: bool
    token: Token | None = None

    def describe(self) -> str:
        if self.token:
            return f"token:{self.token.id}"
        return f"uid:{self.peer.uid}"

    def may_access(self, cid: str, project: str | None, write: bool) -> bool:
        if self.admin:
            return True
        t = self.token
        if t is not None and t.replicate:  # a sender plans from the receiver's snapshot lists
            return not write
        if t is None or t.project is None or project != t.project:
            return False
        if t.containers and cid not in t.containers:
            return False
        return not (write and t.read_only)

    def may_read_files(self, cid: str, project: str | None) -> bool:
        """tree, file and diff: whoever may restore the container, or a `files` token of it."""
        if self.may_access(cid, project, write=True):
            return True
        return bool(self.token and self.token.files and self.may_access(cid, project, write=False))

    @property
    def replicates(self) -> bool:
        """A replication sender: may import into any container and read their snapshot lists."""
        return bool(self.token and self.token.replicate)

    @property
    def may_import(self) -> bool:
        """Import streams: an admin or a `replicate` token (a stream writes owners, set-id
        bits and device nodes as it says: root's power over the pool)."""
        return self.admin or self.replicates

    @property
    def may_read_metrics(self) -> bool:
        return self.admin or bool(self.token and self.token.metrics)


def peer_of(request: web.Request) -> Peer:
    sock = request.transport.get_extra_info("socket") if request.transport else None
    if sock is not None and sock.family == socket.AF_UNIX:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid, uid, gid = struct.unpack("3i", creds)
        return Peer("unix", uid=uid, gid=gid, pid=pid)
    return Peer("tcp")


def _process_groups(pid: int) -> set[int]:
    """Supplementary groups of a live process (empty if it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Groups:"):
                    return {int(g) for g in line.split()[1:]}
    except OSError:
        pass
    return set()


def in_admin_group(peer: Peer, group: str | None) -> bool:
    if not group or peer.uid is None:
        return False
    try:
        g = grp.getgrnam(group)
    except KeyError:
        return False
    if peer.gid == g.gr_gid or (peer.pid and g.gr_gid in _process_groups(peer.pid)):
        return True
    try:
        return pwd.getpwuid(peer.uid).pw_name in g.gr_mem
    except KeyError:
        return False


def bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def authenticate(request: web.Request, tokens: Tokens, admin_group: str | None, now: float) -> Principal | None:
    """The caller of `request`, or None when it must authenticate (401)."""
    peer = peer_of(request)
    if peer.transport == "unix" and (
        peer.uid in (0, os.getuid()) or in_admin_group(peer, admin_group)
    ):
        return Principal(peer, admin=True)
    presented = bearer(request)
    token = tokens.verify(presented, now) if presented else None
    if token is None:
        return None
    return Principal(peer, admin=token.admin, token=token)


@dataclass
class AuthContext:
    """What authentication needs: the token records, the admin group, the clock."""

    tokens: Tokens
    admin_group: str | None
    clock: Clock


AUTH_KEY = web.AppKey("auth", AuthContext)
PRINCIPAL = "principal"


def authorize(request: web.Request) -> Principal:
    """Authenticate every request before any route is served, known or not (401)."""
    ctx = request.app[AUTH_KEY]
    principal = authenticate(request, ctx.tokens, ctx.admin_group, ctx.clock.now())
    if principal is None:
        raise ApiError(401, AUTH_MESSAGE, headers={"WWW-Authenticate": "Bearer"})
    request[PRINCIPAL] = principal
    return principal


def principal_of(request: web.Request) -> Principal:
    return request[PRINCIPAL]


@web.middleware
async def authentication(request: web.Request, handler: Handler) -> web.StreamResponse:
    authorize(request)
    return await handler(request)


def require_admin(request: web.Request) -> Principal:
    principal = principal_of(request)
    if not principal.admin:
        raise ApiError(403, "Admin access required")
    return principal

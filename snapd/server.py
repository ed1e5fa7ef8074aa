"""`snapd serve`: start-up, listeners, signals, orderly shutdown.

Start-up: open the store -> open each pool -> prune what expired while the
daemon was down -> start listeners.  SIGTERM/SIGINT: stop accepting,
finish in-flight operations, close the store, remove the socket, exit 0.
"""

from __future__ import annotations

import asyncio
import errno
import grp
import logging
import os
import signal
import socket
import ssl
import stat
from pathlib import Path

from aiohttp import web

from backends import make_backend
from backends.base import Backend, PoolError

from .api import make_app
from .auth import AuthContext
from .clock import Clock
from .config import Config, ConfigError
from .envelope import BODY_TIMEOUT
from .httpguard import GuardedRunner
from .netwatch import InterfaceListener
from .reaper import Reaper
from .reconcile import reconcile
from .service import SnapshotService
from .store import Store, StoreError
from .tokens import Tokens

log = logging.getLogger("snapd.server")
SHUTDOWN_TIMEOUT = 120.0


def clear_socket_path(path: Path) -> None:
    """Make way for our socket: remove a stale socket, refuse anything else.

    A file that is not a socket, or a socket a live daemon answers on, is a
    ConfigError.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ConfigError(f"socket path {path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        os.unlink(path)  # stale, from a run that did not clean up
    else:
        raise ConfigError(f"socket path {path}: another daemon is listening there")
    finally:
        probe.close()


def bind_unix(path: Path, group: str | None = None) -> socket.socket:
    """A listening Unix socket at `path`, mode 0660, owned by `group` when it exists.

    The directory holding it must not be world-writable (anyone could swap
    the socket); see clear_socket_path for what may already be there.
    """
    parent = path.parent.stat()
    if parent.st_mode & stat.S_IWOTH and not parent.st_mode & stat.S_ISVTX:
        raise ConfigError(f"socket directory {path.parent} is world-writable; refusing to serve there")
    clear_socket_path(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o117)
    try:
        sock.bind(str(path))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"socket path {path}: {exc.strerror}") from None
    finally:
        os.umask(old)
    os.chmod(path, 0o660)
    if group:
        try:
            os.chown(path, -1, grp.getgrnam(group).gr_gid)
        except KeyError:
            log.info("admin group %s does not exist: socket stays owned by gid %d", group, os.getgid())
    sock.listen(512)
    sock.setblocking(False)
    return sock


async def open_backends(cfg: Config) -> list[Backend]:
    backends = []
    for spec in cfg.pools:
        try:
            backend = make_backend(spec.backend, spec.root)
            await backend.open()
        except PoolError as exc:
            raise ConfigError(f"pool {spec}: {exc}") from None
        log.info("pool open kind=%s root=%s", backend.kind, backend.root)
        backends.append(backend)
    return backends


def tls_context(cfg: Config) -> ssl.SSLContext | None:
    """A server TLS context for the TCP listeners, when a certificate is configured."""
    if cfg.tls_cert is None or cfg.tls_key is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cfg.tls_cert, cfg.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"TLS certificate {cfg.tls_cert} / key {cfg.tls_key}: {exc}") from None
    return ctx


class Daemon:
    """One running daemon: store, pools, service, reaper and listeners."""

    def __init__(self, cfg: Config, clock: Clock | None = None) -> None:
        self.cfg = cfg
        self.clock = clock or Clock()
        self.stopping = asyncio.Event()
        self.runner: web.AppRunner | None = None
        self.unix_sock: socket.socket | None = None
        self.interfaces: list[InterfaceListener] = []

    async def start(self) -> None:
        self.cfg.state_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.store = Store(self.cfg.state_dir / "snapd.db")
        except StoreError as exc:
            raise ConfigError(str(exc)) from None
        self.backends = await open_backends(self.cfg)
        await reconcile(self.store, self.backends)
        self.service = SnapshotService(self.store, self.backends, self.clock)
        self.reaper = Reaper(self.service, self.clock)
        pruned = await self.reaper.reap(self.clock.now())
        if pruned:
            log.info("pruned %d snapshots that expired while the daemon was down", pruned)
        self.tokens = Tokens(self.store)
        auth = AuthContext(self.tokens, self.cfg.admin_group, self.clock)
        app = make_app(self.service, auth)
        app[BODY_TIMEOUT] = self.cfg.request_timeout
        self.runner = GuardedRunner(app, head_timeout=self.cfg.request_timeout, access_log=None,
                                    handle_signals=False)
        await self.runner.setup()
        self.unix_sock = bind_unix(self.cfg.socket, self.cfg.admin_group)
        await web.SockSite(self.runner, self.unix_sock, shutdown_timeout=SHUTDOWN_TIMEOUT).start()
        tls = tls_context(self.cfg)
        for host, port in self.cfg.listen:
            site = web.TCPSite(self.runner, host, port, ssl_context=tls,
                               shutdown_timeout=SHUTDOWN_TIMEOUT, reuse_address=True)
            try:
                await site.start()
            except OSError as exc:
                raise ConfigError(f"listen {host}:{port}: {exc.strerror}") from None
        for ifname, port in self.cfg.listen_interfaces:
            listener = InterfaceListener(self.runner, ifname, port, tls, SHUTDOWN_TIMEOUT)
            await listener.start()
            self.interfaces.append(listener)
        self.reaper.start()
        log.info(
            "listening socket=%s tcp=%s pools=%s",
            self.cfg.socket,
            ",".join(f"{h}:{p}" for h, p in self.cfg.listen) or "-",
            ",".join(b.describe() for b in self.backends),
        )

    async def stop(self) -> None:
        log.info("stopping: finishing %d operations in flight", self.service.inflight)
        await self.reaper.stop()
        for listener in self.interfaces:
            await listener.stop()
        if self.runner is not None:
            await self.runner.cleanup()
        await self.service.drain()
        for backend in self.backends:
            await backend.close()
        self.store.close()
        try:
            os.unlink(self.cfg.socket)
        except FileNotFoundError:
            pass
        log.info("stopped")

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        try:
            await self.start()
        except BaseException:
            await self._abort()
            raise
        await self.stopping.wait()
        await self.stop()

    async def _abort(self) -> None:
        """Undo a half-done start-up."""
        for listener in self.interfaces:
            await listener.stop()
        if self.runner is not None:
            await self.runner.cleanup()
        if self.unix_sock is not None:
            try:
                os.unlink(self.cfg.socket)
            except OSError as exc:
                if exc.errno != errno.ENOENT:
                    raise
        if hasattr(self, "store"):
            self.store.close()

"""`snapd serve`: start-up, listeners, signals, reload, orderly shutdown.

Start-up: take sockets passed by systemd -> open the store -> open each pool
-> reconcile pools and store -> prune what expired while the daemon was
down -> start listeners -> READY=1.  SIGHUP re-reads the configuration
(pools, listeners, log level and format; a bad one is logged and the
running one kept).  SIGTERM/SIGINT: STOPPING=1, stop accepting, finish
in-flight operations, close the store, remove the socket it made, exit 0.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import grp
import logging
import os
import signal
import socket
import ssl
import stat
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from aiohttp import web

from backends import make_backend
from backends.base import Backend, PoolError

from snapd import __version__
from snapd.host import logsetup
from snapd.host import systemd
from snapd.http.admin import STATUS_KEY
from snapd.http.admin_expiry import REAPER_KEY
from snapd.http.admin_policies import POLICIES_KEY
from snapd.http.api import make_app
from snapd.http.replication import REPLICATIONS_KEY
from snapd.http.auth import AuthContext
from snapd.core.clock import Clock, iso
from snapd.host.config import Config, ConfigError, PoolSpec, policy_key
from snapd.host.metrics import Metrics
from snapd.host.remote import HttpRemote
from snapd.http.envelope import BODY_TIMEOUT
from snapd.http.guard import BACKLOG, GuardedRunner
from snapd.core import lanes
from snapd.core.coverage import Coverage
from snapd.core.policies.spec import PolicyError, PolicySpec
from snapd.core.policy_book import PolicyBook
from snapd.core.policy_replication import PolicyReplication
from snapd.core.policy_service import PolicyService
from snapd.core.reaper import Reaper
from snapd.core.replication import Replications
from snapd.core.scheduler import Scheduler
from snapd.core.state import State, StateError
from snapd.host.systemd import ActivatedSockets

if TYPE_CHECKING:
    from snapd.http.netwatch import InterfaceListener

log = logging.getLogger("snapd.server")
SHUTDOWN_TIMEOUT = 120.0
STARTUP_STEP = 300.0
"""Seconds of start-up time asked of systemd before each step (EXTEND_TIMEOUT_USEC)."""


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
    sock.listen(BACKLOG)
    sock.setblocking(False)
    return sock


def check_layout(kind: str, layout: str, key: str) -> None:
    """Only overlay pools take a `layout` setting other than auto."""
    if kind != "overlay" and layout != "auto":
        raise ConfigError(f"pool_options.{key!r}: layout applies to overlay pools only "
                          f"(this pool is {kind})")


def set_layout(backend: Backend, layout: str, key: str) -> None:
    """Give a backend its pool's `layout` setting."""
    check_layout(backend.kind, layout, key)
    backend.layout = layout


async def open_backend(spec: PoolSpec, layout: str = "auto") -> Backend:
    """Make and open the backend of a pool; its layout setting is given before open()
    and the start-up recovery, which decide by it."""
    try:
        backend = make_backend(spec.backend, spec.root)
        set_layout(backend, layout, str(spec))
        await backend.open()
    except PoolError as exc:
        raise ConfigError(f"pool {spec}: {exc}") from None
    log.info("pool open kind=%s root=%s", backend.kind, backend.root)
    return backend


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


class Listeners:
    """Every socket the daemon serves, brought in line with a config on start and reload."""

    def __init__(self, runner: web.AppRunner, activated: ActivatedSockets, admin_group: str | None) -> None:
        self.runner = runner
        self.activated = activated
        self.admin_group = admin_group
        self.unix_path: Path | None = None
        self.unix_site: web.SockSite | None = None
        self.tcp: dict[tuple[str, int, bool], web.BaseSite] = {}
        self.interfaces: dict[tuple[str, int, bool], InterfaceListener] = {}
        self.tls: ssl.SSLContext | None = None
        self._passed_started = False

    async def _start_passed(self) -> None:
        """systemd's sockets: served as they are, for the daemon's whole life."""
        for sock in self.activated.unix + self.activated.tcp:
            sock.setblocking(False)
            await web.SockSite(self.runner, sock, shutdown_timeout=SHUTDOWN_TIMEOUT, backlog=BACKLOG).start()
        self._passed_started = True

    async def apply(self, cfg: Config) -> None:
        """Start what `cfg` adds, stop what it drops.  Raises ConfigError and changes
        nothing more when a new listener cannot start.  The Unix socket comes last: once
        it answers, every TCP listener answers too (clients and tests wait for it)."""
        if not self._passed_started:
            await self._start_passed()
        tls = self._tls(cfg)
        on = tls is not None
        passed = {tuple(a) for a in self.activated.tcp_addresses()}
        wanted = {(h, p, on) for h, p in cfg.listen if (h, p) not in passed}
        for key in set(self.tcp) - wanted:  # first, so a port can switch TLS on or off
            await self.tcp.pop(key).stop()
        for key in wanted - set(self.tcp):
            site = web.TCPSite(self.runner, key[0], key[1], ssl_context=tls,
                               shutdown_timeout=SHUTDOWN_TIMEOUT, reuse_address=True,
                               backlog=BACKLOG)
            try:
                await site.start()
            except OSError as exc:
                raise ConfigError(f"listen {key[0]}:{key[1]}: {exc.strerror}") from None
            self.tcp[key] = site
        wanted_if = {(n, p, on) for n, p in cfg.listen_interfaces}
        for key in set(self.interfaces) - wanted_if:
            await self.interfaces.pop(key).stop()
        for key in wanted_if - set(self.interfaces):
            from snapd.http import netwatch  # pyroute2: a third of a start's imports; most hosts never need it

            listener = netwatch.InterfaceListener(self.runner, key[0], key[1], tls, SHUTDOWN_TIMEOUT)
            await listener.start()
            self.interfaces[key] = listener
        if not self.activated.unix and cfg.socket != self.unix_path:
            sock = bind_unix(cfg.socket, self.admin_group)
            site = web.SockSite(self.runner, sock, shutdown_timeout=SHUTDOWN_TIMEOUT, backlog=BACKLOG)
            await site.start()
            await self._close_unix()
            self.unix_path, self.unix_site = cfg.socket, site

    def _tls(self, cfg: Config) -> ssl.SSLContext | None:
        """One TLS context for every TCP listener; on reload a new certificate is loaded
        into it, so listeners keep running and new handshakes use the new certificate."""
        if cfg.tls_cert is None:
            self.tls = None
        elif self.tls is None:
            self.tls = tls_context(cfg)
        else:
            fresh = tls_context(cfg)  # ConfigError (and nothing changed) if it does not load
            assert fresh is not None and cfg.tls_key is not None
            self.tls.load_cert_chain(cfg.tls_cert, cfg.tls_key)
        return self.tls

    async def _close_unix(self) -> None:
        if self.unix_site is not None:
            await self.unix_site.stop()
        if self.unix_path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.unix_path)
        self.unix_path = self.unix_site = None

    async def close(self) -> None:
        """Stop the interface followers; the runner's cleanup closes the sites."""
        for listener in self.interfaces.values():
            await listener.stop()
        self.interfaces.clear()

    def remove_socket(self) -> None:
        """Remove the socket file the daemon made (never systemd's)."""
        if self.unix_path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.unix_path)

    def describe(self) -> list[str]:
        out = [f"unix:{p} (systemd)" for p in self.activated.unix_paths()]
        out += [f"tcp:{h}:{p} (systemd)" for h, p in self.activated.tcp_addresses()]
        if self.unix_path is not None:
            out.append(f"unix:{self.unix_path}")
        out += [f"tcp:{h}:{p}" for h, p, _ in sorted(self.tcp)]
        for (name, port, _), listener in sorted(self.interfaces.items()):
            out += [f"tcp:{a}:{port} ({name})" for a in listener.addresses] or [f"tcp:{name}:{port} (no address)"]
        return out


class RecentErrors(logging.Handler):
    """The last warnings and errors, for `snapd status`."""

    def __init__(self, keep: int = 20) -> None:
        super().__init__(logging.WARNING)
        self.records: collections.deque[dict[str, str]] = collections.deque(maxlen=keep)

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append({"time": iso(record.created), "logger": record.name,
                             "level": record.levelname.lower(), "message": record.getMessage()[:500]})


class Daemon:
    """One running daemon: store, pools, service, reaper, listeners, systemd."""

    def __init__(self, cfg: Config, clock: Clock | None = None,
                 reload_config: Callable[[], Config] | None = None) -> None:
        self.cfg = cfg
        self.clock = clock or Clock()
        self.reload_config = reload_config
        self.stopping = asyncio.Event()
        self.ready = asyncio.Event()
        self.started_at = time.time()
        self.runner: web.AppRunner | None = None
        self.listeners: Listeners | None = None
        self.state: State | None = None
        self.backends: dict[str, Backend] = {}
        self.metrics = Metrics()
        self.watchdog = systemd.Watchdog(status=self.status_line)
        self.errors = RecentErrors()
        self.activated = ActivatedSockets()
        self.lanes: lanes.Lanes | None = None

    # -- start and stop --------------------------------------------------------------

    async def start(self) -> None:
        self.activated = ActivatedSockets.take()  # before any child process inherits them
        self.lanes = lanes.install()  # before any thread is started: asyncio.run shuts it down at the end
        logging.getLogger().addHandler(self.errors)
        self.watchdog.start()
        try:
            self.state = State(self.cfg.state_dir)
        except StateError as exc:
            raise ConfigError(str(exc)) from None
        # Each start-up step may take long on a large pool: ask systemd for more time
        # before each (a no-op without systemd), instead of one fixed TimeoutStartSec.
        systemd.status("opening pools and reconciling them with the store")
        for spec in self.cfg.pools:
            systemd.extend_timeout(STARTUP_STEP)
            self.backends[str(spec)] = await open_backend(spec, self.cfg.policy(spec).layout)
        self.service = self.state.service(list(self.backends.values()), self.clock, self.metrics)
        self.service.slots.limit = self.cfg.max_concurrent_per_project
        self.service.stream_idle_timeout = self.cfg.stream_idle_timeout
        self._serve_pools(self.cfg)
        # Interrupted operations first (the journal says which way each goes), then
        # the disk-vs-store reconcile; both before any listener.
        await self.service.settle(before_each=lambda: systemd.extend_timeout(STARTUP_STEP))
        self.reaper = Reaper(self.service, self.clock)
        systemd.extend_timeout(STARTUP_STEP)
        pruned = await self.reaper.reap(self.clock.now())
        if pruned:
            log.info("pruned %d snapshots that expired while the daemon was down", pruned)
        self.metrics.watch_zfs(lambda: [(b.pool_id, b.stats) for b in self.service.backends if b.kind == "zfs"])
        self.metrics.watch_pools(self.service.pool_usage)
        self.metrics.watch_reaper(self.reaper)
        self.metrics.watch_problems(self.service.problem_counts)
        self.metrics.watch_store(self.service.writer_stats)
        self.metrics.watch_recounts(self.service.recounts.stats)
        self.coverage = Coverage(self.service)
        await self._check_policies(self.cfg)
        try:
            book = self.state.policies(self.clock, self.cfg.policies, self.cfg.source)
        except PolicyError as exc:
            raise ConfigError(f"{self.cfg.source}: policies: {exc.key}: {exc.message}") from None
        self.scheduler = Scheduler(self.service, book, self.coverage, self.clock)
        self.policies = PolicyService(book, self.scheduler)
        self.service.keep_source = self.policies.keep_reasons
        self.metrics.watch_policies(self.scheduler)
        self.metrics.watch_freezes(lambda: dict(self.service.freezer.counts))  # type: ignore[union-attr]
        self.metrics.watch_lanes(self.service.slots.counts, self.lanes.queued)
        self.tokens = self.state.tokens()
        app = make_app(self.service, AuthContext(self.tokens, self.cfg.admin_group, self.clock), self.metrics)
        app[BODY_TIMEOUT] = self.cfg.request_timeout
        app[STATUS_KEY] = self.status
        app[REAPER_KEY] = self.reaper
        app[POLICIES_KEY] = self.policies
        self.replications = Replications(self.service, lambda: self.cfg.targets, HttpRemote, self.clock)
        app[REPLICATIONS_KEY] = self.replications
        self._replicate_policies(book)
        self.metrics.watch_replications(self.replications.states, lambda: dict(self.replications.sent))
        self.runner = GuardedRunner(app, head_timeout=self.cfg.request_timeout, access_log=None,
                                    handle_signals=False)
        await self.runner.setup()
        self.listeners = Listeners(self.runner, self.activated, self.cfg.admin_group)
        await self.listeners.apply(self.cfg)
        self.reaper.start()
        self.scheduler.start()
        log.info("listening on %s; pools %s", ", ".join(self.listeners.describe()),
                 ", ".join(self.backends))
        # what start-up built lives as long as the daemon: kept out of the collector's sight,
        # a full collection (during a pruning pass of 10,000 snapshots, say) walks only what
        # was made since, a third of the pause
        gc.freeze()
        systemd.ready(self.status_line())
        self.ready.set()

    async def stop(self) -> None:
        systemd.stopping(f"finishing {self.service.inflight} operations")
        log.info("stopping: finishing %d operations in flight", self.service.inflight)
        await self.scheduler.stop()
        await self.reaper.stop()
        await self.policy_replication.stop()
        await self.replications.stop()
        await self._close()
        log.info("stopped")

    async def _close(self) -> None:
        """Release everything start() took, however far it got."""
        if self.listeners is not None:
            await self.listeners.close()
        if self.runner is not None:
            await self.runner.cleanup()
        if hasattr(self, "service"):
            await self.service.drain()
        for backend in self.backends.values():
            await backend.close()
        if self.state is not None:
            self.state.close()
        if self.listeners is not None:
            self.listeners.remove_socket()
        await self.watchdog.stop()
        logging.getLogger().removeHandler(self.errors)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        reloads: asyncio.Queue[None] = asyncio.Queue()
        loop.add_signal_handler(signal.SIGHUP, reloads.put_nowait, None)
        try:
            await self.start()
        except BaseException:
            await self._close()
            raise
        stop = asyncio.create_task(self.stopping.wait())
        while not stop.done():
            hup = asyncio.create_task(reloads.get())
            await asyncio.wait([stop, hup], return_when=asyncio.FIRST_COMPLETED)
            if hup.done():
                await self.reload()
            else:
                hup.cancel()
        await self.stop()

    def _replicate_policies(self, book: PolicyBook) -> None:
        """Policies that name targets: their snapshots replicated, failed jobs retried."""
        book.known_targets = lambda: self.cfg.targets
        for entry in book.entries():  # stored by an earlier start: still followed, the gap said once
            missing = [t for t in entry.spec.targets if t not in self.cfg.targets]
            if missing:
                log.error("policy %s names targets not in the config (%s): its snapshots are not replicated there",
                          entry.spec.name, ", ".join(missing))
        scheduler = self.scheduler
        self.policy_replication = PolicyReplication(
            self.replications, self.clock, lambda cid: (c.spec if (c := scheduler.covered.get(cid)) else None))
        scheduler.on_snapshot.append(self.policy_replication.snapshot_taken)

    def _serve_pools(self, cfg: Config) -> None:
        """The open pools, each with its reserves, snapshot limits and restore hooks, to the
        service; the layout setting goes to the backend (overlay pools only)."""
        policies = {key: cfg.policy(key) for key in self.backends}
        for key, backend in self.backends.items():
            set_layout(backend, policies[key].layout, key)
        self.service.set_pools(list(self.backends.values()),  # type: ignore[union-attr]
                               {b.pool_id: policies[key] for key, b in self.backends.items()},
                               cfg.policy(""))

    async def _check_policies(self, cfg: Config, pools: list[str] | None = None) -> None:
        """ConfigError (naming `policies.NAME.KEY`) unless every file policy names only
        configured pools and applies to something that exists."""
        if pools is None:
            pools = [b.pool_id for b in self.backends.values()]
        for spec in cfg.policies.values():
            try:
                await self.coverage.check_applies(spec, pools)
            except PolicyError as exc:
                raise ConfigError(f"{cfg.source}: {policy_key(spec.name, exc.key)}: {exc.message}") from None

    # -- reload ------------------------------------------------------------------------

    async def reload(self) -> None:
        """Re-read the configuration; keep the running one if the new one is bad."""
        systemd.reloading("re-reading the configuration")
        try:
            if self.reload_config is None:
                raise ConfigError("this daemon was started without a configuration to re-read")
            new = self.reload_config()
            if new.state_dir != self.cfg.state_dir:
                raise ConfigError("state_dir cannot change on reload; restart the daemon")
            wanted = {str(p) for p in new.pools}
            for spec in new.pools:  # before anything changes: the settings of pools kept open
                kept = self.backends.get(str(spec)) or next(
                    (b for b in self.backends.values() if b.root == spec.root), None)
                if kept is not None:
                    check_layout(kept.kind, new.policy(spec).layout, str(spec))
            # A pool whose spec was only respelled (auto:/x -> overlay:/x) keeps its open
            # backend: opening it again would sweep scratch space under work in flight.
            by_root = {b.root: key for key, b in self.backends.items() if key not in wanted}
            renamed = {str(spec): by_root.pop(spec.root) for spec in new.pools
                       if str(spec) not in self.backends and spec.root in by_root}
            for new_key, old_key in renamed.items():
                self.backends[new_key] = self.backends.pop(old_key)
            await self._check_policies(new, [str(p) for p in new.pools])
            self._check_file_policies(new.policies, new.source)
            try:
                self.policies.book.check_api_targets(new.targets)
            except PolicyError as exc:
                raise ConfigError(f"{new.source}: targets: policy {exc.key}: {exc.message}") from None
            added = [spec for spec in new.pools if str(spec) not in self.backends]
            opened = {str(spec): await open_backend(spec, new.policy(spec).layout) for spec in added}
            try:
                await self.listeners.apply(new)  # type: ignore[union-attr]
            except BaseException:
                for backend in opened.values():
                    await backend.close()
                raise
            await self.service.settle(list(opened.values()))  # type: ignore[union-attr]
            removed = [key for key in self.backends if key not in wanted]
            for key in removed:
                await self.backends.pop(key).close()
            self.backends.update(opened)
            self._serve_pools(new)
            self.service.slots.limit = new.max_concurrent_per_project
            self.service.stream_idle_timeout = new.stream_idle_timeout
            self.policies.book.set_file(new.policies)
            self.scheduler.touch(fresh=True)
            logsetup.configure(new.log_level, new.log_format)
            logging.getLogger().addHandler(self.errors)
            self.cfg = new
            log.info("reloaded: pools added=%s removed=%s; listening on %s",
                     ",".join(opened) or "-", ",".join(removed) or "-", ", ".join(self.listeners.describe()))
        except ConfigError as exc:
            log.error("reload rejected, the running configuration stays: %s", exc)
        except Exception as exc:  # a reload must never take the daemon down
            log.error("reload failed, the running configuration stays: %s", exc, exc_info=exc)
        systemd.ready(self.status_line())

    def _check_file_policies(self, specs: dict[str, PolicySpec], source: str) -> None:
        try:
            self.policies.book.check_file(specs)
        except PolicyError as exc:
            raise ConfigError(f"{source}: policies: {exc.key}: {exc.message}") from None

    # -- status ------------------------------------------------------------------------

    def status_line(self) -> str:
        if not hasattr(self, "service"):
            return "starting"
        return (f"{len(self.backends)} pools, {self.service.count()} snapshots, "  # type: ignore[union-attr]
                f"{self.service.inflight} operations in flight, {len(self.reaper.failures)} failing deletes")

    async def status(self) -> dict:
        usage = {pool: (count, held) for pool, count, held in self.service.pool_usage()}
        pools = []
        for key, backend in self.backends.items():
            count, held = usage.get(backend.pool_id, (0, 0))
            policy = self.service.policy(backend)
            with lanes.quick():
                free_bytes, free_inodes = await backend.free_bytes(), await backend.free_inodes()
            pools.append({"pool": backend.pool_id, "spec": key, "kind": backend.kind, "root": backend.root,
                          "free_bytes": free_bytes, "free_inodes": free_inodes,
                          "snapshots": count, "bytes": held,
                          "limits": {"reserve": str(policy.reserve), "reserve_inodes": str(policy.reserve_inodes),
                                     "max_snapshots_per_container": policy.max_snapshots_per_container,
                                     "max_snapshots_per_project": policy.max_snapshots_per_project,
                                     "manual_expiry": policy.manual_expiry},
                          })
        return {
            "version": __version__,
            "pid": os.getpid(),
            "uptime_s": round(time.time() - self.started_at, 3),
            "pools": pools,
            "snapshots_total": self.service.count(),  # type: ignore[union-attr]
            "inflight": self.service.inflight,
            "store": self.service.writer_stats(),  # type: ignore[union-attr]
            "listeners": self.listeners.describe() if self.listeners else [],
            "reaper": {
                "deleted": self.reaper.deleted,
                "failing": len(self.reaper.failures),
                "next_expiry": iso(self.service.next_expiry()),  # type: ignore[union-attr]
            },
            "policies": [{"name": e["name"], "source": e["source"], **e["status"]} for e in self.policies.list()],
            "scheduler": self.scheduler.lag_summary(),
            "log": {"level": self.cfg.log_level, "format": self.cfg.log_format},
            "watchdog_interval_s": self.watchdog.interval,
            "last_errors": list(self.errors.records),
            "problems": self.service.problems(),
            "freezes": dict(self.service.freezer.counts),  # type: ignore[union-attr]
            "lanes": {"max_concurrent_per_project": self.service.slots.limit,
                      "projects": self.service.slots.status(),
                      "threads": self.lanes.status() if self.lanes else {}},
        }

"""systemd integration without libsystemd: sd_notify, the watchdog, socket activation.

* `notify(state)` sends one datagram to $NOTIFY_SOCKET (a path, or an
  abstract socket written with a leading '@'), e.g. "READY=1\\nSTATUS=...".
  It is a no-op returning False when the daemon was not started by systemd.
* `Watchdog` is an asyncio task sending WATCHDOG=1 every half of
  $WATCHDOG_USEC.  It runs *on the event loop*, so a loop blocked by a
  synchronous call stops the pings and systemd restarts the service.
* `listen_fds()` takes the sockets systemd passed (LISTEN_FDS, LISTEN_PID,
  LISTEN_FDNAMES; fds from 3), grouped by name ('unknown' when unnamed),
  and unsets those variables so children do not inherit them.

Protocol references: sd_notify(3), sd_listen_fds(3), sd_watchdog_enabled(3).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger("snapd.systemd")

SD_LISTEN_FDS_START = 3
_LISTEN_VARS = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


# -- sd_notify ---------------------------------------------------------------------


def _notify_address(value: str) -> str | bytes | None:
    if value.startswith("@"):
        return b"\0" + os.fsencode(value[1:])  # abstract namespace
    if value.startswith("/"):
        return value
    return None  # vsock:… and other forms are not used on container hosts


def notify(state: str) -> bool:
    """Send `state` (newline-separated KEY=VALUE lines) to systemd.

    True when a datagram was sent; False when $NOTIFY_SOCKET is unset or
    unusable (never raises: a notification must not break the daemon).
    """
    value = os.environ.get("NOTIFY_SOCKET")
    if not value:
        return False
    address = _notify_address(value)
    if address is None:
        log.debug("NOTIFY_SOCKET=%r: unsupported address", value)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode("utf-8", "replace"))
    except OSError as exc:
        log.debug("sd_notify to %s failed: %s", value, exc)
        return False
    return True


def one_line(text: str, limit: int = 200) -> str:
    """`text` made safe as a STATUS= value: one line, bounded."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def ready(status: str | None = None) -> bool:
    """READY=1 (and MAINPID, so a forking wrapper would still be right)."""
    lines = ["READY=1", f"MAINPID={os.getpid()}"]
    if status:
        lines.append(f"STATUS={one_line(status)}")
    return notify("\n".join(lines))


def status(text: str) -> bool:
    return notify(f"STATUS={one_line(text)}")


def stopping(status_text: str | None = None) -> bool:
    lines = ["STOPPING=1"]
    if status_text:
        lines.append(f"STATUS={one_line(status_text)}")
    return notify("\n".join(lines))


def reloading(status_text: str | None = None) -> bool:
    """RELOADING=1 before re-reading the configuration (send ready() after).

    MONOTONIC_USEC lets systemd >= 253 (Type=notify-reload) match the
    reload to this message; older versions ignore it.
    """
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    lines = ["RELOADING=1", f"MONOTONIC_USEC={usec}"]
    if status_text:
        lines.append(f"STATUS={one_line(status_text)}")
    return notify("\n".join(lines))


def extend_timeout(seconds: float) -> bool:
    """Ask for `seconds` more of start-up (or stop) time: a long reconcile."""
    return notify(f"EXTEND_TIMEOUT_USEC={int(seconds * 1_000_000)}")


# -- watchdog ------------------------------------------------------------------------


def watchdog_usec() -> int | None:
    """$WATCHDOG_USEC when it is meant for this process (sd_watchdog_enabled)."""
    usec = os.environ.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = os.environ.get("WATCHDOG_PID")
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value if value > 0 else None


class Watchdog:
    """Pings WATCHDOG=1 from the event loop at half the watchdog interval.

    `status`, if given, is called at each ping; when its text changed since
    the last ping it is sent along as STATUS= (a cheap live summary in
    `systemctl status`).  Without $WATCHDOG_USEC (and no `interval`) the
    task is not started and `enabled` is False.
    """

    def __init__(self, interval: float | None = None,
                 status: Callable[[], str] | None = None) -> None:
        if interval is None:
            usec = watchdog_usec()
            interval = usec / 2_000_000 if usec else None
        self.interval = interval
        self.status = status
        self.pings = 0
        self._last_status: str | None = None
        self._task: asyncio.Task | None = None

    @property
    def enabled(self) -> bool:
        return self.interval is not None

    def start(self) -> None:
        if self.enabled and self._task is None:
            self._task = asyncio.create_task(self._run(), name="watchdog")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    def ping(self) -> bool:
        lines = ["WATCHDOG=1"]
        if self.status is not None:
            try:
                text = one_line(self.status())
            except Exception as exc:  # a status callback must not stop the pings
                text = f"status unavailable: {exc}"
            if text != self._last_status:
                lines.append(f"STATUS={text}")
                self._last_status = text
        self.pings += 1
        return notify("\n".join(lines))

    async def _run(self) -> None:
        assert self.interval is not None
        while True:
            self.ping()
            await asyncio.sleep(self.interval)


# -- socket activation -------------------------------------------------------------------


def activation_pending() -> bool:
    """True when systemd passed sockets to this process (without taking them)."""
    pid = os.environ.get("LISTEN_PID", "")
    fds = os.environ.get("LISTEN_FDS", "")
    return pid.isdigit() and int(pid) == os.getpid() and fds.isdigit() and int(fds) > 0


def listen_fds(unset_environment: bool = True) -> dict[str, list[socket.socket]]:
    """The sockets systemd passed to this process, by FileDescriptorName.

    Empty when LISTEN_PID is not this process.  Unnamed fds are listed under
    'unknown'.  Passed fds that are not sockets (ListenFIFO=…) are skipped.
    The sockets are close-on-exec and non-blocking (ready for asyncio).
    """
    env = {k: os.environ.get(k) for k in _LISTEN_VARS}
    if unset_environment:
        for k in _LISTEN_VARS:
            os.environ.pop(k, None)
    pid, count = env["LISTEN_PID"], env["LISTEN_FDS"]
    if not pid or not count or not pid.isdigit() or int(pid) != os.getpid():
        return {}
    try:
        n = int(count)
    except ValueError:
        return {}
    names = env["LISTEN_FDNAMES"].split(":") if env["LISTEN_FDNAMES"] else []
    out: dict[str, list[socket.socket]] = {}
    for i in range(n):
        fd = SD_LISTEN_FDS_START + i
        name = names[i] if i < len(names) and names[i] else "unknown"
        try:
            os.set_inheritable(fd, False)
            sock = socket.socket(fileno=fd)
        except OSError as exc:
            log.warning("passed fd %d (%s) is not a usable socket: %s", fd, name, exc)
            continue
        sock.setblocking(False)
        out.setdefault(name, []).append(sock)
    return out


@dataclass
class ActivatedSockets:
    """Passed sockets split by transport: the API treats AF_UNIX peers by
    SO_PEERCRED and everything else as TCP (tokens)."""

    unix: list[socket.socket] = field(default_factory=list)
    tcp: list[socket.socket] = field(default_factory=list)

    @classmethod
    def take(cls, unset_environment: bool = True) -> ActivatedSockets:
        found = cls()
        for socks in listen_fds(unset_environment).values():
            for s in socks:
                if s.family == socket.AF_UNIX:
                    found.unix.append(s)
                elif s.family in (socket.AF_INET, socket.AF_INET6) and s.type == socket.SOCK_STREAM:
                    found.tcp.append(s)
                else:
                    log.warning("ignoring passed socket family=%s type=%s", s.family, s.type)
                    s.close()
        return found

    def __bool__(self) -> bool:
        return bool(self.unix or self.tcp)

    def unix_paths(self) -> list[str]:
        return [_sockname(s) for s in self.unix]

    def tcp_addresses(self) -> list[tuple[str, int]]:
        return [s.getsockname()[:2] for s in self.tcp]

    def describe(self) -> str:
        parts = self.unix_paths() + [f"{h}:{p}" for h, p in self.tcp_addresses()]
        return ",".join(parts) or "-"


def _sockname(sock: socket.socket) -> str:
    name = sock.getsockname()
    if isinstance(name, bytes):  # abstract
        return "@" + name[1:].decode("utf-8", "replace")
    return name

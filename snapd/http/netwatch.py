"""TCP listeners that follow one network interface's addresses (pyroute2, netlink).

`--listen-interface eth1:7070` serves every address of eth1 on port 7070:
the addresses present at start-up, and any added later (a netlink event,
not a poll: served as soon as the kernel reports it); a removed address's
listener is closed.  IPv6 link-local addresses are served with their scope.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl

from aiohttp import web
from pyroute2 import AsyncIPRoute
from pyroute2.netlink.rtnl import RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR

from snapd.host.config import ConfigError
from snapd.http.guard import BACKLOG

log = logging.getLogger("snapd.netwatch")
SCOPE_LINK = 253
RETRIES = 20  # a new IPv6 address is unusable until duplicate detection ends


class InterfaceListener:
    """Listeners on every address of one interface, kept in step with it."""

    def __init__(self, runner: web.AppRunner, ifname: str, port: int,
                 ssl_context: ssl.SSLContext | None, shutdown_timeout: float) -> None:
        self.runner = runner
        self.ifname = ifname
        self.port = port
        self.ssl_context = ssl_context
        self.shutdown_timeout = shutdown_timeout
        self.sites: dict[str, web.TCPSite] = {}
        self._stack = contextlib.AsyncExitStack()
        self._task: asyncio.Task | None = None
        self._adding: set[asyncio.Task] = set()
        self._index = 0

    @property
    def addresses(self) -> list[str]:
        return sorted(self.sites)

    async def start(self) -> None:
        monitor = await self._stack.enter_async_context(AsyncIPRoute())
        await monitor.bind(groups=RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR)
        async with AsyncIPRoute() as ipr:
            found = await ipr.link_lookup(ifname=self.ifname)
            if not found:
                await self._stack.aclose()
                raise ConfigError(f"listen_interfaces: no interface named {self.ifname!r}")
            self._index = found[0]
            async for msg in await ipr.addr("dump", index=self._index):
                await self._add(self._host(msg))
        self._task = asyncio.create_task(self._follow(monitor), name=f"netwatch-{self.ifname}")

    def _host(self, msg) -> str:
        address = msg.get_attr("IFA_ADDRESS")
        if msg["family"] == 10 and msg["scope"] == SCOPE_LINK:
            return f"{address}%{self.ifname}"
        return address

    async def _follow(self, monitor: AsyncIPRoute) -> None:
        while True:
            try:
                async for msg in monitor.get():
                    if msg["index"] != self._index:
                        continue
                    if msg.get("event") == "RTM_NEWADDR":
                        task = asyncio.create_task(self._add(self._host(msg), retries=RETRIES))
                        self._adding.add(task)
                        task.add_done_callback(self._adding.discard)
                    elif msg.get("event") == "RTM_DELADDR":
                        await self._remove(self._host(msg))
            except asyncio.CancelledError:
                raise
            except Exception:  # a bad message must not end the watch
                log.exception("netlink monitor of %s failed; continuing", self.ifname)
                await asyncio.sleep(0.5)

    async def _add(self, host: str, retries: int = 0) -> None:
        if host in self.sites:
            return
        site = web.TCPSite(self.runner, host, self.port, ssl_context=self.ssl_context,
                           shutdown_timeout=self.shutdown_timeout, reuse_address=True,
                           backlog=BACKLOG)
        for attempt in range(retries + 1):
            try:
                await site.start()
                break
            except OSError as exc:
                if attempt == retries:
                    log.error("cannot listen on %s port %d (%s): %s", host, self.port, self.ifname, exc.strerror)
                    with contextlib.suppress(Exception):
                        await site.stop()
                    return
                await asyncio.sleep(0.1)
        self.sites[host] = site
        log.info("listening interface=%s address=%s port=%d", self.ifname, host, self.port)

    async def _remove(self, host: str) -> None:
        site = self.sites.pop(host, None)
        if site is not None:
            await site.stop()
            log.info("stopped listening interface=%s address=%s (address removed)", self.ifname, host)

    async def stop(self) -> None:
        for task in [self._task, *self._adding]:
            if task is not None:
                task.cancel()
        await asyncio.gather(*[t for t in [self._task, *self._adding] if t is not None], return_exceptions=True)
        for host in list(self.sites):
            await self._remove(host)
        await self._stack.aclose()

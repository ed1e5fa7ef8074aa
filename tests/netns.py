"""A network namespace joined to this one by a veth pair (for TCP between daemons in tests)."""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import os
import random
import secrets
import socket
from collections.abc import Iterator
from dataclasses import dataclass

from .conftest import unavailable

BENCHMARKING = ipaddress.ip_network("198.18.0.0/15")
"""RFC 2544's range: each link takes a /24 of it that no interface of the host uses, so
runs side by side (the stress script's lanes, a second checkout) never share a route."""


@dataclass
class Link:
    netns: str
    host_if: str
    host_addr: str
    """The host's end of the veth pair."""
    ns_addr: str
    extra_addr: str
    """A third address of the subnet, on neither end (a test may add it to the host's)."""

    def set_state(self, state: str) -> None:
        """Bring the host's end "up" or "down" (cut the link / mend it)."""
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            (idx,) = ipr.link_lookup(ifname=self.host_if)
            ipr.link("set", index=idx, state=state)


def free_subnet(used: set[str]) -> ipaddress.IPv4Network:
    """A random /24 of BENCHMARKING none of whose addresses is in `used`."""
    subnets = list(BENCHMARKING.subnets(new_prefix=24))
    random.shuffle(subnets)
    return next(n for n in subnets if not any(ipaddress.ip_address(a) in n for a in used))


@contextlib.contextmanager
def veth_namespace() -> Iterator[Link]:
    """A network namespace joined to this one by a veth pair (made and removed here)."""
    if os.geteuid() != 0:
        unavailable("network namespaces need root")
    from pyroute2 import IPRoute, NetNS, netns

    tag = secrets.token_hex(3)
    name, host_if, ns_if = f"snapdtest-{tag}", f"sdh{tag}", f"sdn{tag}"
    with IPRoute() as ipr:
        used = {a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(family=socket.AF_INET)}
    host_addr, ns_addr, extra_addr = (str(a) for a in itertools.islice(free_subnet(used).hosts(), 3))
    netns.create(name)
    try:
        with IPRoute() as ipr:
            ipr.link("add", ifname=host_if, kind="veth", peer=ns_if)
            (host_idx,) = ipr.link_lookup(ifname=host_if)
            (ns_idx,) = ipr.link_lookup(ifname=ns_if)
            ipr.link("set", index=ns_idx, net_ns_fd=name)
            ipr.addr("add", index=host_idx, address=host_addr, prefixlen=24)
            ipr.link("set", index=host_idx, state="up")
        with NetNS(name) as ns:
            (idx,) = ns.link_lookup(ifname=ns_if)
            ns.addr("add", index=idx, address=ns_addr, prefixlen=24)
            ns.link("set", index=idx, state="up")
            (lo,) = ns.link_lookup(ifname="lo")
            ns.link("set", index=lo, state="up")
        yield Link(name, host_if, host_addr, ns_addr, extra_addr)
    finally:
        with IPRoute() as ipr:
            if ipr.link_lookup(ifname=host_if):
                ipr.link("del", ifname=host_if)
        netns.remove(name)

"""TCP from another network namespace over a veth pair; interface-following listeners; TLS."""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .certs import self_signed
from .client import snaps
from .daemon import DaemonProcess, free_port
from .digest import write_tree
from .harness import new_cid
from .netns import Link, veth_namespace
from .waiting import until

@pytest.fixture(scope="module")
def link() -> Iterator[Link]:
    """A network namespace joined to this one by a veth pair (made and removed here)."""
    with veth_namespace() as made:
        yield made


def from_namespace(netns_name: str, requests: list[tuple[str, int, str, str | None]]) -> list:
    """Run GETs from inside the namespace: (host, port, path, token) -> status or error name."""
    script = (
        "import http.client, json, sys\n"
        "out = []\n"
        "for host, port, path, token in json.loads(sys.argv[1]):\n"
        "    try:\n"
        "        c = http.client.HTTPConnection(host, port, timeout=5)\n"
        "        c.request('GET', path, headers={'Authorization': f'Bearer {token}'} if token else {})\n"
        "        out.append(c.getresponse().status)\n"
        "    except OSError as e:\n"
        "        out.append(type(e).__name__)\n"
        "print(json.dumps(out))\n"
    )
    import sys

    result = subprocess.run(["ip", "netns", "exec", netns_name, sys.executable, "-c", script, json.dumps(requests)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_another_namespace_reaches_the_daemon_only_with_a_token(link: Link, tmp_path: Path) -> None:
    pool = tmp_path / "pool"
    cid = new_cid()
    write_tree(pool / cid, {"f": "1"})
    port = free_port()
    d = DaemonProcess(tmp_path / "d", [f"overlay:{pool}"], tcp=False,
                      extra=["--listen-interface", f"{link.host_if}:{port}"]).start()
    try:
        r = d.unix.request("PUT", f"/api/v1/admin/containers/{cid}/project", {"project": "web"})
        assert r.status == 200
        token = d.unix.post("/api/v1/admin/tokens", {"project": "web"}).data["secret"]
        other = d.unix.post("/api/v1/admin/tokens", {"project": "db"}).data["secret"]
        path = snaps(cid)
        got = from_namespace(link.netns, [(link.host_addr, port, path, None), (link.host_addr, port, path, "csd_x"),
                                          (link.host_addr, port, path, other), (link.host_addr, port, path, token)])
        assert got == [401, 401, 403, 200]
        # only the interface's addresses are served: not loopback
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()

        # an address added to the interface is served; a removed one is closed
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            (idx,) = ipr.link_lookup(ifname=link.host_if)
            ipr.addr("add", index=idx, address=link.extra_addr, prefixlen=24)
            added = time.monotonic()
            try:
                until(lambda: from_namespace(link.netns, [(link.extra_addr, port, path, token)]) == [200],
                      "the new address is served", interval=0.05)
                print(f"new address served after {time.monotonic() - added:.2f}s")
                assert f"address={link.extra_addr}" in d.log_text()
            finally:
                ipr.addr("del", index=idx, address=link.extra_addr, prefixlen=24)
        until(lambda: from_namespace(link.netns, [(link.extra_addr, port, path, token)]) != [200],
              "the removed address is no longer served", interval=0.05)
        assert f"address={link.extra_addr} (address removed)" in d.log_text()
        assert from_namespace(link.netns, [(link.host_addr, port, path, token)]) == [200]
    finally:
        assert d.stop() == 0


def test_unknown_interface_is_a_start_up_error(tmp_path: Path) -> None:
    import sys

    (tmp_path / "pool").mkdir()
    out = subprocess.run([sys.executable, "-m", "snapd", "serve", "--pool", f"overlay:{tmp_path / 'pool'}",
                          "--socket", str(tmp_path / "s.sock"), "--state-dir", str(tmp_path / "st"),
                          "--listen-interface", "nosuchif0:7070"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "nosuchif0" in out.stderr.splitlines()[-1]
    assert "Traceback" not in out.stderr and not (tmp_path / "s.sock").exists()


def test_tls_listener(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    pool = tmp_path / "pool"
    cid = new_cid()
    write_tree(pool / cid, {"f": "1"})
    d = DaemonProcess(tmp_path / "d", [f"overlay:{pool}"], tcp=True,
                      extra=["--tls-cert", str(cert), "--tls-key", str(key)]).start()
    try:
        token = d.unix.post("/api/v1/admin/tokens", {"admin": True}).data["secret"]
        import http.client

        ctx = ssl.create_default_context(cafile=str(cert))
        conn = http.client.HTTPSConnection("localhost", d.port, context=ctx, timeout=10)
        conn.request("GET", snaps(cid), headers={"Authorization": f"Bearer {token}"})
        resp = conn.getresponse()
        assert resp.status == 200 and json.loads(resp.read())["data"]["container_id"] == cid
        plain = http.client.HTTPConnection("localhost", d.port, timeout=10)
        with pytest.raises((ConnectionError, http.client.HTTPException, OSError)):
            plain.request("GET", snaps(cid))
            plain.getresponse().read()
        (tmp_path / "token").write_text(token + "\n")
        cli = [sys.executable, "-m", "snapd", "list", "--url", f"https://localhost:{d.port}",
               "--token-file", str(tmp_path / "token"), cid]
        env = {k: v for k, v in os.environ.items() if not k.startswith("SNAPD_")}
        trusted = subprocess.run([*cli, "--tls-ca", str(cert), "--json"], capture_output=True, text=True,
                                 timeout=60, env=env)
        assert trusted.returncode == 0 and json.loads(trusted.stdout)["data"]["container_id"] == cid, trusted.stderr
        untrusted = subprocess.run(cli, capture_output=True, text=True, timeout=60, env=env)
        assert untrusted.returncode == 1 and "certificate verify failed" in untrusted.stderr, untrusted.stderr
        assert "Traceback" not in untrusted.stderr
    finally:
        assert d.stop() == 0


def test_a_reload_swaps_the_tls_certificate_without_dropping_the_listener(tmp_path: Path) -> None:
    import signal
    import sys

    certs = {cn: self_signed(tmp_path, cn) for cn in ("first.test", "second.test")}
    pool = tmp_path / "pool"
    pool.mkdir()
    port = free_port()
    cfg = tmp_path / "config.toml"

    def write(cn: str) -> None:
        cert, key = certs[cn]
        cfg.write_text(f'pools = ["overlay:{pool}"]\nlisten = ["127.0.0.1:{port}"]\n'
                       f'tls_cert = "{cert}"\ntls_key = "{key}"\n')

    def served_name() -> str:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with ctx.wrap_socket(raw) as tls:
                der = tls.getpeercert(binary_form=True)
        pem = ssl.DER_cert_to_PEM_cert(der)
        out = subprocess.run(["openssl", "x509", "-noout", "-subject"], input=pem, capture_output=True, text=True)
        return out.stdout.strip()

    write("first.test")
    d = DaemonProcess(tmp_path / "d", [], tcp=False)
    d.args = lambda: [sys.executable, "-m", "snapd", "serve", "--socket", str(d.socket),  # type: ignore[method-assign]
                      "--state-dir", str(d.state_dir), "--config", str(cfg)]
    d.start()
    try:
        assert "first.test" in served_name()
        write("second.test")
        d.proc.send_signal(signal.SIGHUP)
        until(lambda: "reloaded:" in d.log_text(), "the daemon logs 'reloaded:'", interval=0.05)
        assert "second.test" in served_name()
    finally:
        assert d.stop() == 0

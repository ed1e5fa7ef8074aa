"""The real daemon as a service: sd_notify, socket activation, SIGHUP, metrics, logs, status."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from .client import Client, snaps, unix_listening
from .conftest import unavailable
from .daemon import DaemonProcess, free_port
from .digest import write_tree
from .harness import new_cid
from .waiting import until

REPO = Path(__file__).parent.parent


def pool_with(tmp_path: Path, name: str = "pool") -> tuple[Path, str]:
    pool = tmp_path / name
    cid = new_cid()
    write_tree(pool / cid, {"f": "1"})
    return pool, cid


def test_sd_notify_ready_watchdog_stopping(tmp_path: Path) -> None:
    pool, cid = pool_with(tmp_path)
    notify_path = tmp_path / "notify.sock"
    sink = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sink.bind(str(notify_path))
    sink.settimeout(20)
    d = DaemonProcess(tmp_path / "d", [f"overlay:{pool}"], tcp=False,
                      env={"NOTIFY_SOCKET": str(notify_path), "WATCHDOG_USEC": "400000"})
    d.start()
    try:
        messages: list[str] = []

        def until(pred) -> None:  # type: ignore[no-untyped-def]
            while not pred():
                messages.append(sink.recv(4096).decode())

        until(lambda: any("READY=1" in m for m in messages))
        ready = next(m for m in messages if "READY=1" in m)
        # start-up asked for time before its steps (opening pools, recovery, reconcile, pruning)
        before_ready = messages[:messages.index(ready)]
        assert sum("EXTEND_TIMEOUT_USEC=300000000" in m for m in before_ready) >= 4, before_ready
        assert "STATUS=1 pools" in ready and f"MAINPID={d.proc.pid}" in ready
        assert d.unix.get(snaps(cid)).status == 200  # ready means serving
        until(lambda: sum("WATCHDOG=1" in m for m in messages) >= 3)  # pinged every 0.2 s
        d.proc.send_signal(signal.SIGTERM)
        until(lambda: any("STOPPING=1" in m for m in messages))
        assert d.proc.wait(30) == 0
    finally:
        d.kill()
        sink.close()


def test_socket_activation_unix_and_tcp(tmp_path: Path) -> None:
    tool = shutil.which("systemd-socket-activate")
    if tool is None:
        unavailable("systemd-socket-activate is not installed (Debian package systemd)")
    pool, cid = pool_with(tmp_path)
    passed, own = tmp_path / "passed.sock", tmp_path / "own.sock"
    port = free_port()
    log = tmp_path / "daemon.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [tool, "-l", str(passed), "-l", f"127.0.0.1:{port}", "--fdname=api:tcp",
             sys.executable, "-m", "snapd", "serve", "--socket", str(own), "--state-dir", str(tmp_path / "st"),
             "--pool", f"overlay:{pool}", "--listen", f"127.0.0.1:{port}"],
            stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        until(lambda: unix_listening(passed) or proc.poll() is not None, "systemd-socket-activate listens")
        assert proc.poll() is None, log.read_text()
        # the first connection starts the daemon, which answers it on the passed socket
        r = Client(unix=passed).get(snaps(cid))
        assert r.status == 200 and r.data["container_id"] == cid
        assert Client(tcp=("127.0.0.1", port)).get(snaps(cid)).status == 401
        assert not own.exists()  # it did not open its own socket
        status = Client(unix=passed).get("/api/v1/admin/status").data
        assert f"unix:{passed} (systemd)" in status["listeners"]
        assert f"tcp:127.0.0.1:{port} (systemd)" in status["listeners"]
        assert not any(x.startswith("unix:" + str(own)) for x in status["listeners"])
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()
    assert passed.exists()  # systemd's socket is not the daemon's to remove


def test_sighup_applies_a_new_config_and_rejects_a_broken_one(tmp_path: Path) -> None:
    pool_a, cid_a = pool_with(tmp_path, "a")
    pool_b, cid_b = pool_with(tmp_path, "b")
    port1, port2 = free_port(), free_port()
    cfg = tmp_path / "config.toml"

    def write(pools: list[Path], port: int, level: str, extra: str = "") -> None:
        cfg.write_text(f'pools = {json.dumps([f"overlay:{p}" for p in pools])}\n'
                       f'listen = ["127.0.0.1:{port}"]\nlog_level = "{level}"\n{extra}')

    write([pool_a], port1, "info")
    d = DaemonProcess(tmp_path / "d", [], tcp=False, extra=["--config", str(cfg)])
    d.args = lambda: [sys.executable, "-m", "snapd", "serve", "--socket", str(d.socket),  # type: ignore[method-assign]
                      "--state-dir", str(d.state_dir), "--config", str(cfg)]
    d.start()
    try:
        assert d.unix.get(snaps(cid_a)).status == 200 and d.unix.get(snaps(cid_b)).status == 404
        assert Client(tcp=("127.0.0.1", port1)).get(snaps(cid_a)).status == 401

        write([pool_a, pool_b], port2, "debug")
        d.proc.send_signal(signal.SIGHUP)
        until(lambda: "reloaded:" in d.log_text(), "the daemon logs 'reloaded:'", interval=0.05)
        assert d.unix.get(snaps(cid_b)).status == 200
        assert Client(tcp=("127.0.0.1", port2)).get(snaps(cid_a)).status == 401
        with pytest.raises(ConnectionRefusedError):
            Client(tcp=("127.0.0.1", port1)).get(snaps(cid_a))
        assert d.unix.get("/api/v1/admin/status").data["log"]["level"] == "debug"

        write([pool_b], port1, "info", "bogus_key = 1\n")
        d.proc.send_signal(signal.SIGHUP)
        until(lambda: "reload rejected" in d.log_text(), "the daemon logs 'reload rejected'", interval=0.05)
        assert "bogus_key" in d.log_text()
        # the running configuration stays: both pools, port2, debug
        assert d.unix.get(snaps(cid_a)).status == 200 and d.unix.get(snaps(cid_b)).status == 200
        assert Client(tcp=("127.0.0.1", port2)).get(snaps(cid_a)).status == 401
        status = d.unix.get("/api/v1/admin/status").data
        assert status["log"]["level"] == "debug" and len(status["pools"]) == 2
        assert any("reload rejected" in e["message"] for e in status["last_errors"])
    finally:
        assert d.stop() == 0


def scrape(client: Client) -> dict[str, dict[tuple, float]]:
    conn = client._conn()
    try:
        conn.request("GET", "/metrics", headers=client.headers)
        resp = conn.getresponse()
        body = resp.read().decode()
        assert resp.status == 200 and resp.getheader("Content-Type").startswith("text/plain"), body
    finally:
        conn.close()
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def test_metrics_parse_and_move(tmp_path: Path) -> None:
    pool, cid = pool_with(tmp_path)
    d = DaemonProcess(tmp_path / "d", [f"overlay:{pool}"], tcp=True).start()
    try:
        route = "/api/v1/containers/{id}/snapshots"
        before = scrape(d.unix)
        key = (("method", "POST"), ("route", route), ("status", "200"))
        count = before.get("container_snapd_http_requests_total", {}).get(key, 0)
        for _ in range(3):
            assert d.unix.post(snaps(cid)).status == 200
        after = scrape(d.unix)
        assert after["container_snapd_http_requests_total"][key] == count + 3
        ops = {k: v for k, v in after["container_snapd_operations_total"].items() if ("kind", "create") in k}
        assert sum(ops.values()) >= 3
        assert any(("backend", "overlay") in k for k in ops)
        pools = after["container_snapd_snapshots"]
        assert sum(pools.values()) == 3 and "container_snapd_snapshot_bytes" in after
        assert "container_snapd_reaper_deleted_total" in after or "container_snapd_reaper_deleted" in after
        # who may read them: admins and metrics tokens, not project tokens or anonymous TCP
        metrics_token = d.unix.post("/api/v1/admin/tokens", {"metrics": True}).data["secret"]
        project_token = d.unix.post("/api/v1/admin/tokens", {"project": "p"}).data["secret"]
        assert "container_snapd_http_requests_total" in scrape(
            Client(tcp=("127.0.0.1", d.port), headers={"Authorization": f"Bearer {metrics_token}"}))
        r = Client(tcp=("127.0.0.1", d.port), headers={"Authorization": f"Bearer {project_token}"}).get("/metrics")
        assert (r.status, r.body["message"]) == (403, "Metrics access required")
        assert Client(tcp=("127.0.0.1", d.port)).get("/metrics").status == 401
        # a metrics-only token sees no containers
        r = Client(tcp=("127.0.0.1", d.port), headers={"Authorization": f"Bearer {metrics_token}"}).get(snaps(cid))
        assert r.status == 403
    finally:
        assert d.stop() == 0


def test_request_ids_and_structured_lines(tmp_path: Path) -> None:
    pool, cid = pool_with(tmp_path)
    d = DaemonProcess(tmp_path / "d", [f"overlay:{pool}"], tcp=False, extra=["--log-format", "json"]).start()
    try:
        ok = d.unix.post(snaps(cid), headers={"X-Request-Id": "deploy-42.a"})
        assert ok.headers["x-request-id"] == "deploy-42.a"
        bad = d.unix.get(snaps(new_cid()))
        assert bad.status == 404 and bad.request_id == bad.headers["x-request-id"]
        insane = d.unix.get(snaps(cid), headers={"X-Request-Id": "x" * 100})
        assert insane.headers["x-request-id"] != "x" * 100
        name = ok.data["snapshot"]["name"]
    finally:
        assert d.stop() == 0
    lines = [json.loads(line) for line in d.log_text().splitlines() if line.startswith("{")]
    assert lines and len(lines) == len([x for x in d.log_text().splitlines() if x.strip()])
    request = [x for x in lines if x.get("msg") == "request" and x.get("request_id") == "deploy-42.a"]
    operation = [x for x in lines if x.get("msg") == "operation" and x.get("request_id") == "deploy-42.a"]
    assert request and request[0]["status"] == 200 and request[0]["container"] == cid
    assert "duration_ms" in request[0] and request[0]["route"] == "/api/v1/containers/{id}/snapshots"
    assert operation and operation[0]["op"] == "create" and operation[0]["snapshot"] == name
    assert operation[0]["outcome"] == "ok" and operation[0]["container"] == cid


def test_status_command(tmp_path: Path) -> None:
    pool, cid = pool_with(tmp_path)
    d = DaemonProcess(tmp_path / "d", [f"overlay:{pool}"], tcp=True).start()
    try:
        d.unix.post(snaps(cid), {"expiry": 3})
        out = subprocess.run([sys.executable, "-m", "snapd", "status", "--socket", str(d.socket)],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert "container-snapd 0." in out.stdout and f"overlay:{pool}" in out.stdout
        assert "snapshots: 1" in out.stdout and "in 3d" in out.stdout and f"127.0.0.1:{d.port}" in out.stdout
    finally:
        assert d.stop() == 0



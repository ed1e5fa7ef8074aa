"""The README's examples work as printed."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

from .client import unix_listening
from .waiting import until

README = Path(__file__).parent.parent / "README.md"


def readme_block(marker: str) -> str:
    """The fenced bash block of the README that contains `marker`."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), re.S)
    (block,) = [b for b in blocks if marker in b]
    return block


def test_curl_examples_work_against_the_dev_daemon(tmp_path: Path) -> None:
    block = readme_block("curl -s --unix-socket")
    proc = subprocess.Popen([sys.executable, "-m", "snapd", "serve", "--dev"], cwd=tmp_path,
                            stderr=subprocess.DEVNULL)
    try:
        sock = tmp_path / ".snapd-dev" / "api.sock"
        until(lambda: unix_listening(sock), "the dev daemon's socket listens", interval=0.05)
        out = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=tmp_path,
                             capture_output=True, text=True, timeout=120)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    assert out.returncode == 0, out.stderr
    for message in ("Snapshot created successfully", "Snapshots retrieved successfully",
                    "Snapshot retrieved successfully", "Snapshot alias updated successfully",
                    "Container restored from snapshot successfully", "Snapshot deleted successfully",
                    '"openapi":"3.1.0"'):
        assert message in out.stdout, message
    assert '"statusCode":4' not in out.stdout and '"statusCode":5' not in out.stdout


def test_readme_config_example_is_a_valid_config(tmp_path: Path) -> None:
    from snapd.host.config import load_file

    block = re.search(r"```toml\n(.*?)```", README.read_text(), re.S).group(1)
    path = tmp_path / "config.toml"
    path.write_text(block)
    from snapd.host.config import KEYS

    assert set(load_file(path)) | {"tls_cert", "tls_key"} == set(KEYS)  # every key documented

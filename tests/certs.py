"""Self-signed TLS certificates for tests (openssl; the test is skipped where it cannot make one)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from .conftest import unavailable


def self_signed(where: Path, cn: str = "localhost") -> tuple[Path, Path]:
    """A certificate for `cn` and its key, made in `where`: (cert, key)."""
    cert, key = where / f"{cn}.crt", where / f"{cn}.key"
    made = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}",
                           "-days", "1", "-keyout", str(key), "-out", str(cert)], capture_output=True)
    if made.returncode != 0:
        unavailable(f"openssl cannot make a test certificate: {made.stderr[-200:]!r}")
    return cert, key

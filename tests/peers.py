"""Requests made as another local user, for access-control tests (needs root)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

Request = tuple[str, str, Any, dict[str, str]]
"""(method, path, JSON body or None, headers)"""


def requests_as_uid(socket_path: Path, uid: int, requests: list[Request], gid: int | None = None
                    ) -> list[tuple[int, str, str | None]]:
    """Make requests from a forked child running as `uid` (and `gid`, default `uid`).

    The child reaches the socket through an O_PATH descriptor of its
    directory opened before dropping privileges, so the test's private
    temporary directories need not be opened up.  Returns, per request,
    (status, message, WWW-Authenticate header).
    """
    from .client import Client

    dir_fd = os.open(socket_path.parent, os.O_PATH)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(uid if gid is None else gid)
            os.setuid(uid)
            client = Client(unix=f"/proc/self/fd/{dir_fd}/{socket_path.name}")
            out = []
            for method, path, body, headers in requests:
                r = client.request(method, path, body, headers=headers, check_schema=False, binary=True)
                out.append((r.status, r.body.get("message") if r.body else None, r.headers.get("www-authenticate")))
            os.write(write_end, json.dumps(out).encode())
            os._exit(0)
        except BaseException as exc:  # report, never return into pytest
            os.write(write_end, json.dumps({"error": repr(exc)}).encode())
            os._exit(1)
    os.close(write_end)
    os.close(dir_fd)
    with os.fdopen(read_end, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    result = json.loads(data)
    assert os.waitstatus_to_exitcode(status) == 0, result
    return [tuple(x) for x in result]

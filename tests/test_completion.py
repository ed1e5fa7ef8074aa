"""Bash completion generated from the CLI's argparse parser."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from snapd.cli.main import build_parser
from snapd.cli.completion import bash_script

SCRIPT = Path(__file__).resolve().parent.parent / "completion" / "snapd.bash"


def test_checked_in_script_is_current() -> None:
    assert SCRIPT.read_text() == bash_script(build_parser()), (
        "completion/snapd.bash is stale: python -m snapd.cli.completion > completion/snapd.bash")


def complete(*words: str) -> list[str]:
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash is not installed")
    code = (f'source {SCRIPT}; COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); '
            '_snapd_complete; printf "%s\\n" "${COMPREPLY[@]}"')
    res = subprocess.run([bash, "-c", code, "bash", *words], check=False, capture_output=True, text=True, timeout=30)
    assert res.returncode == 0 and not res.stderr, res.stderr
    return [w for w in res.stdout.splitlines() if w]


def test_completes_subcommands_and_options(tmp_path: Path) -> None:
    subcommands = [a for a in build_parser()._actions if a.dest == "command"][0].choices
    assert set(complete("snapd", "")) >= set(subcommands) | {"--version"}
    assert complete("snapd", "se") == ["serve"]
    assert complete("snapd", "serve", "--log-level", "") == ["debug", "info", "warning", "error"]
    assert set(complete("snapd", "create", "--")) >= {"--alias", "--expiry", "--socket", "--json"}
    # a value given to an option is not taken for a subcommand
    assert "--json" in complete("snapd", "list", "--socket", "list", "--")
    (tmp_path / "conf.toml").write_text("")
    assert complete("snapd", "serve", "--config", str(tmp_path / "co")) == [str(tmp_path / "conf.toml")]
    for name, sub in subcommands.items():  # nested subcommands (e.g. `token create`) too
        nested = [a for a in sub._actions if a.__class__.__name__ == "_SubParsersAction"]
        for inner in nested[0].choices if nested else []:
            assert inner in complete("snapd", name, "")

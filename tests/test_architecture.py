"""The layers hold: every import in snapd/ and backends/ runs the allowed way.

Read from the source with `ast` (nothing is imported), so a lazy import inside
a function counts as much as one at the top of a module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ("snapd.core", "snapd.host", "snapd.http", "snapd.cli")
ALLOWED: dict[str, tuple[str, ...]] = {
    # layer -> the snapd/backends packages it may import (besides itself)
    "backends": (),
    "snapd.core": ("backends",),
    "snapd.host": ("snapd.core", "backends"),
    "snapd.http": ("snapd.core", "snapd.host", "backends"),
    "snapd.cli": ("snapd.core.clock", "snapd.core.text", "snapd.host", "snapd.server"),
    "snapd.server": ("snapd.core", "snapd.host", "snapd.http", "backends"),
    "snapd": ("snapd.cli",),
}
STORE = "snapd.core.store"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> str:
    for layer in (*LAYERS, "snapd.server", "backends"):
        if module == layer or module.startswith(layer + "."):
            return layer
    return "snapd"


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) of every import of snapd or backends in `path`."""
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                prefix = ".".join(base)
                mod = f"{prefix}.{node.module}" if node.module else prefix
            else:
                mod = node.module or ""
            # `from snapd.core import store` imports the module snapd.core.store
            names = [mod] + [f"{mod}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] in ("snapd", "backends"):
                found.append((node.lineno, name))
    return found


def sources() -> list[Path]:
    return sorted(p for d in ("snapd", "backends") for p in (ROOT / d).rglob("*.py"))


def is_module(name: str) -> bool:
    rel = Path(*name.split("."))
    return (ROOT / rel).with_suffix(".py").exists() or (ROOT / rel / "__init__.py").exists()


def violations() -> list[str]:
    bad = []
    for path in sources():
        me = module_name(path)
        mine = layer_of(me)
        for line, target in imports(path):
            if not is_module(target) and "." in target:
                target = target.rpartition(".")[0]  # a name imported from a module
            theirs = layer_of(target)
            where = f"{path.relative_to(ROOT)}:{line} imports {target}"
            if target == STORE and mine != "snapd.core":
                bad.append(f"{where}: only the core touches the store")
            elif theirs == mine or target in ("snapd", "snapd.__init__"):
                continue
            elif not any(target == a or target.startswith(a + ".") for a in ALLOWED[mine]):
                bad.append(f"{where}: {mine} may import only {', '.join(ALLOWED[mine]) or 'itself'}")
    return sorted(set(bad))


def test_every_import_runs_with_the_layers() -> None:
    assert violations() == []


def test_the_check_sees_a_wrong_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The rules are not vacuous: a backend importing the daemon, the core importing
    HTTP and a route importing the store are each caught."""
    planted = {
        ROOT / "backends" / "_planted_arch.py": "from snapd.core import service\n",
        ROOT / "snapd" / "core" / "_planted_arch.py": "from snapd.http.envelope import ok\n",
        ROOT / "snapd" / "http" / "_planted_arch.py": "from ..core.store import Store\n",
    }
    try:
        for path, text in planted.items():
            path.write_text(text)
        found = "\n".join(violations())
    finally:
        for path in planted:
            path.unlink()
    assert "backends/_planted_arch.py:1 imports snapd.core.service" in found
    assert "snapd/core/_planted_arch.py:1 imports snapd.http.envelope" in found
    assert "snapd/http/_planted_arch.py:1 imports snapd.core.store: only the core" in found


def test_every_package_says_what_it_holds_and_may_import() -> None:
    for layer in LAYERS:
        doc = ast.get_docstring(ast.parse((ROOT / Path(*layer.split(".")) / "__init__.py").read_text()))
        assert doc and "May import" in doc, layer

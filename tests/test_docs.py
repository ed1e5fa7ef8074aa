"""Docs that resolve: every relative link and every repository path that README.md,
docs/ and the code's docstrings and comments name exists."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
TOP = ("snapd", "backends", "tests", "scripts", "docs", "systemd", "completion", ".ci")
PATH = re.compile(r"(?<![\w./-])((?:%s)/[\w./-]*[\w-]|[\w-]+\.md)(?![\w/-])" % "|".join(re.escape(t) for t in TOP))


def _exists(name: str, base: Path) -> bool:
    name = name.split("#", 1)[0].rstrip("/.")
    if not name:
        return True
    for candidate in (base / name, ROOT / name):
        if candidate.exists():
            return True
    # a dotted module path written as a file path without .py (snapd/core/service)
    return (ROOT / f"{name}.py").exists()


def missing_links(text: str, base: Path) -> list[str]:
    return [t for t in LINK.findall(text)
            if not re.match(r"^[a-z]+:", t) and not t.startswith("#") and not _exists(t, base)]


def missing_paths(text: str, base: Path) -> list[str]:
    return sorted({p for p in PATH.findall(text) if "*" not in p and not _exists(p, base)})


def _code_texts() -> list[tuple[Path, str]]:
    """Docstrings and comments of every module in snapd/, backends/ and scripts/."""
    out = []
    for path in sorted([*(ROOT / "snapd").rglob("*.py"), *(ROOT / "backends").rglob("*.py"),
                        *(ROOT / "scripts").glob("*.py")]):
        source = path.read_text()
        tree = ast.parse(source)
        docs = [ast.get_docstring(n) or "" for n in ast.walk(tree)
                if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))]
        comments = [line.split("#", 1)[1] for line in source.splitlines() if "#" in line]
        out.append((path, "\n".join(docs + comments)))
    return out


def test_markdown_links_resolve() -> None:
    bad = {str(d.relative_to(ROOT)): missing_links(d.read_text(), d.parent) for d in DOCS}
    assert {k: v for k, v in bad.items() if v} == {}


def test_paths_named_in_docs_exist() -> None:
    bad = {str(d.relative_to(ROOT)): missing_paths(d.read_text(), d.parent) for d in DOCS}
    assert {k: v for k, v in bad.items() if v} == {}


def test_paths_named_in_docstrings_and_comments_exist() -> None:
    bad = {str(p.relative_to(ROOT)): missing_paths(text, p.parent) for p, text in _code_texts()}
    assert {k: v for k, v in bad.items() if v} == {}


def test_the_checks_see_a_broken_reference(tmp_path: Path) -> None:
    text = "see [the design](docs/nothing-here.md), `snapd/gone.py` and docs/zfs.md"
    assert missing_links(text, ROOT) == ["docs/nothing-here.md"]
    assert missing_paths(text, ROOT) == ["docs/nothing-here.md", "snapd/gone.py"]

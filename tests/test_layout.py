"""The README's Layout table matches the tree, and pages stay small enough to only draw and dispatch."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PAGE_LINES = 200


def _layout_table() -> str:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    return readme.split("## Layout", 1)[1].split("\n## ", 1)[0]


def _modules(package: Path) -> set[str]:
    """Module and subpackage names directly in `package`, without dunder files."""
    names = {p.stem for p in package.glob("*.py") if not p.stem.startswith("__")}
    return names | {p.name for p in package.iterdir() if (p / "__init__.py").is_file()}


def test_layout_table_names_every_module():
    table = _layout_table()
    named = set(re.findall(r"`(?:[a-z_.]+/)*([a-z_]+)/?`", table))  # a module, or the last part of a folder
    explorer, figures = REPO / "explorer", REPO / "explorer" / "figures"
    missing = sorted(m for m in _modules(explorer) | _modules(figures) if m not in named)
    assert not missing, f"README Layout does not name: {missing}"


def test_pages_only_draw():
    """Each page under 200 lines, and explorer/ never imports Streamlit (so the CLI runs without it)."""
    pages = [REPO / "app.py", *sorted((REPO / "pages").glob("*.py"))]
    long = {p.name: n for p in pages if (n := len(p.read_text(encoding="utf-8").splitlines())) >= PAGE_LINES}
    assert not long, f"pages over {PAGE_LINES} lines: {long}"
    for path in (REPO / "explorer").rglob("*.py"):
        imported = {alias.name.split(".")[0] for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
                    if isinstance(node, (ast.Import, ast.ImportFrom))
                    for alias in (node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")])}
        assert "streamlit" not in imported, f"{path.relative_to(REPO)} imports streamlit"

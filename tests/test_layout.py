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


def _row(table: str, first_cell: str) -> str:
    """The Layout row whose first cell starts with `first_cell` (e.g. "`explorer/lm/`")."""
    return next((line for line in table.splitlines() if line.startswith(f"| {first_cell}")), "")


def test_layout_table_names_every_module():
    """Each layer folder's row names every module and subpackage in it (and the folders inside them)."""
    table = _layout_table()
    explorer = REPO / "explorer"
    packages = sorted(p for p in explorer.iterdir() if (p / "__init__.py").is_file())
    missing = {}
    for package in packages:
        row = _row(table, f"`explorer/{package.name}/`")
        named = set(re.findall(r"`(?:[a-z0-9_.]+/)*([a-z0-9_]+)/?`", row))
        inner = [sub for sub in package.rglob("*") if (sub / "__init__.py").is_file()]
        wanted = _modules(package) | {m for sub in inner for m in _modules(sub)}
        if absent := sorted(wanted - named):
            missing[package.name] = absent
    top = set(re.findall(r"`([a-z_]+)`", _row(table, "`explorer/` top")))
    if absent := sorted(_modules(explorer) - {p.name for p in packages} - top):
        missing["top"] = absent
    assert not missing, f"README Layout does not name: {missing}"


def test_pages_only_draw():
    """Each page under 200 lines, and explorer/ never imports Streamlit (so the CLI runs without it)."""
    pages = [REPO / "app.py", *sorted((REPO / "pages").rglob("*.py"))]
    long = {p.name: n for p in pages if (n := len(p.read_text(encoding="utf-8").splitlines())) >= PAGE_LINES}
    assert not long, f"pages over {PAGE_LINES} lines: {long}"
    for path in (REPO / "explorer").rglob("*.py"):
        imported = {alias.name.split(".")[0] for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
                    if isinstance(node, (ast.Import, ast.ImportFrom))
                    for alias in (node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")])}
        assert "streamlit" not in imported, f"{path.relative_to(REPO)} imports streamlit"


def test_why_lift_so_heavy_is_attributed_to_its_authors():
    """2402.11700 is Yuan, Nie, Ma & Färber's; Men et al. wrote ShortGPT (2403.03853)."""
    files = [REPO / "README.md", REPO / "app.py", REPO / "pyproject.toml", *REPO.glob("pages/**/*.py"),
             *REPO.glob("explorer/**/*.py")]
    wrong = [str(f.relative_to(REPO)) for f in files
             if re.search(r"Men et al\.[^\n]{0,80}2402\.11700|2402\.11700[^\n]{0,80}Men et al", f.read_text(encoding="utf-8"))]
    assert not wrong, f"2402.11700 attributed to Men et al. in {wrong}"

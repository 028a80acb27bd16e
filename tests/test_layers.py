"""The layering rule: compute modules are pure functions of models and inputs; the run store and
its caching wrappers (explorer.state.cache), the job runner and the run views are a layer above them,
so a compute module never imports that layer (not even inside a function)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

EXPLORER = Path(__file__).resolve().parent.parent / "explorer"
COMPUTE = ("similarity", "metrics", "heal", "scoring", "evaluate", "reuse", "repair", "prune", "stream", "bootstrap",
           "generate", "sweep/measure", "sweep/settings", "sweep/points")
STATE = {"explorer.state.store", "explorer.jobs", "explorer.views.runs", "explorer.state.cache"}


def imported(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside a function."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)  # from explorer import store
    return names


@pytest.mark.parametrize("module", COMPUTE)
def test_compute_modules_never_import_the_state_layer(module):
    assert not imported(EXPLORER / f"{module}.py") & STATE


def test_the_check_sees_an_import_inside_a_function(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    from explorer import store\n    import explorer.state.cache\n")
    assert imported(sample) & STATE == {"explorer.state.store", "explorer.state.cache"}

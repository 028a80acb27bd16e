"""The layering rule: `explorer/`'s folders are layers and imports only go down them, with no circle
anywhere, so each capability has one obvious home and a compute module never reaches the store, the
views or Streamlit. Checked on the code's own imports (read with `ast`, also inside functions;
annotations under `if TYPE_CHECKING:` do not run and do not count)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

EXPLORER = Path(__file__).resolve().parent.parent / "explorer"
# Bottom to top. A module may import its own layer's modules and every layer below, never above.
LAYERS = ("core", "lm", "evaluation", "surgery", "analysis", "export", "state", "experiments", "views")
TOP = "top"  # cli, jobs, kinds: they join the layers
COMPUTE = ("lm", "evaluation", "surgery", "analysis")  # pure functions of models and inputs
ABOVE_COMPUTE = ("state", "views", "experiments")


def module_name(path: Path) -> str:
    parts = path.relative_to(EXPLORER.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else TOP


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def imports(path: Path) -> list[tuple[str, int, bool]]:
    """(module imported, line, inside a function) for every import that runs, resolved to explorer
    modules where it names one (`from explorer.x import y` where y is a module counts as x.y)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = _type_checking_lines(tree)
    found = []
    for node in ast.walk(tree):
        if node.lineno in skipped if hasattr(node, "lineno") else False:
            continue
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno, node.col_offset > 0) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                is_module = (EXPLORER.parent / candidate.replace(".", "/")).with_suffix(".py").is_file() or \
                    (EXPLORER.parent / candidate.replace(".", "/") / "__init__.py").is_file()
                found.append((candidate if is_module else node.module, node.lineno, node.col_offset > 0))
    return found


SOURCES = sorted(EXPLORER.rglob("*.py"))
GRAPH = {module_name(p): {m for m, _, _ in imports(p) if m.startswith("explorer")} for p in SOURCES}


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(EXPLORER)))
def test_imports_only_go_down(path):
    here = layer(module_name(path))
    rank = {name: i for i, name in enumerate((*LAYERS, TOP))}
    upward = [f"{m} (line {line})" for m, line, _ in imports(path)
              if m.startswith("explorer.") and rank[layer(m)] > rank[here]]
    assert not upward, f"{path.relative_to(EXPLORER)} ({here}) imports a layer above it: {upward}"


@pytest.mark.parametrize("path", [p for p in SOURCES if layer(module_name(p)) in COMPUTE],
                         ids=lambda p: str(p.relative_to(EXPLORER)))
def test_compute_never_imports_state_views_experiments_or_streamlit(path):
    bad = [m for m, _, _ in imports(path)
           if m.split(".")[0] == "streamlit" or (m.startswith("explorer.") and layer(m) in ABOVE_COMPUTE)]
    assert not bad, f"{path.relative_to(EXPLORER)} imports {bad}"


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of the graph (module -> modules it imports), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target in graph and not state.get(target) and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if not state.get(start) and (cycle := visit(start)):
            return cycle
    return None


def test_no_import_cycle():
    # A package's __init__ importing its own modules is how a package is built, not a circle.
    graph = {m: {t for t in targets if not (m == t.rsplit(".", 1)[0] and (EXPLORER.parent / m.replace(".", "/") / "__init__.py").is_file())}
             for m, targets in GRAPH.items()}
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_finder_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(EXPLORER)))
def test_imports_inside_functions_only_defer_a_heavy_optional_dependency(path):
    """An import inside a function hides an arrow; it is kept only to defer a heavy optional
    dependency (peft, lm-eval, Ray, ...), and says so in a `# deferred:` comment."""
    lines = path.read_text(encoding="utf-8").splitlines()
    hidden = [f"line {line}: {lines[line - 1].strip()}" for m, line, inside in imports(path)
              if inside and (m.startswith("explorer") or "# deferred:" not in lines[line - 1])]
    assert not hidden, f"{path.relative_to(EXPLORER)}: {hidden}"


def test_the_checks_see_imports_inside_functions_and_skip_annotations(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from explorer.state import store\n"
                      "def f():\n    import explorer.state.cache\n")
    assert [(m, inside) for m, _, inside in imports(sample)] == [("typing", False), ("explorer.state.cache", True)]

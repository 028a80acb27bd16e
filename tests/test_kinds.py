"""The run-kind registry (explorer.kinds) is complete: every kind the code stores has an entry, every
background job has a runner the job runner finds, and the Runs page's headline, table and figures
come from the entry (a kind without its own falls back to the generic result view)."""

from __future__ import annotations

import ast
from pathlib import Path

from explorer import jobs
from explorer.kinds import KINDS, headline, job_kinds, metrics_frame, run_figures
from explorer.state.store import Run

EXPLORER = Path(__file__).resolve().parents[1] / "explorer"


def _stored_kinds() -> set[str]:
    """Every literal kind passed to the store's create_run / cached / submit, and the cache's kinds."""
    kinds = set()
    for path in EXPLORER.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
                    "create_run", "cached", "submit", "_calibration_run") and node.args:
                first = node.args[0]
                if isinstance(first, ast.Constant) and isinstance(first.value, str):
                    kinds.add(first.value)
    return kinds


def test_every_stored_kind_is_registered():
    stored = _stored_kinds()
    assert {"similarity", "metrics", "brute-force", "quick-eval", "heal", "sweep", "classify"} <= stored
    assert stored <= set(KINDS), f"kinds stored but not registered: {sorted(stored - set(KINDS))}"


def test_jobs_are_the_kinds_with_runners():
    assert set(job_kinds()) == {"heal", "sweep", "classify", "speed"}
    assert all(callable(KINDS[kind].runner) for kind in job_kinds())


def test_unknown_job_kind_is_refused(tmp_path):
    from explorer.core.errors import ExplorerError
    from explorer.state.store import Store

    store = Store(tmp_path / "s.sqlite")
    try:
        jobs.submit(store, "similarity", "m", {})
    except ExplorerError as exc:
        assert "Unknown job kind 'similarity'" in str(exc) and "heal" in str(exc)
    else:
        raise AssertionError("a kind without a runner was submitted")
    assert store.list_runs() == []


def test_the_registry_picks_headline_table_and_figures():
    brute = Run(1, "brute-force", None, "done", "m", {}, {"n": 2, "loss_increase": [0.5, 0.1, 0.3]}, None, None, 0, 0)
    assert headline(brute) == "n=2: smallest loss increase 0.100 at layer 1"
    assert list(metrics_frame(brute, [])["loss_increase"]) == [0.5, 0.1, 0.3]
    assert run_figures(brute, []) == []
    other = Run(2, "quick-eval", None, "done", "m", {}, {"accuracy": 0.5, "ci_low": 0.4, "ci_high": 0.6}, None, None, 0, 0)
    assert headline(other) == "accuracy 0.50 [0.40, 0.60]"  # the generic view
    unknown = Run(3, "from-a-newer-version", None, "done", "m", {}, {"x": 1}, None, None, 0, 0)
    assert headline(unknown) == "x=1" and run_figures(unknown, []) == []

"""The Runs page and its exports, on real runs of the tiny llama: every kind's CSV parses back to
the stored numbers, two runs compare, a delete asks first, and a deleted run that a page still
references gives a message instead of a traceback."""

from __future__ import annotations

import io
import json
from dataclasses import replace

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from explorer.experiments.sweep import SweepSettings, run_sweep, start_sweep, sweep_points
from explorer.export.mergekit import mergekit_yaml
from explorer.kinds import headline, metrics_frame, run_figures
from explorer.lm.save import save_pruned
from explorer.state.cache import cached_distances, cached_scores
from explorer.state.store import Store
from explorer.surgery.prune import prune_block
from explorer.views.figures.export import figures_html
from explorer.views.runs import (
    mergekit_text,
    model_folder,
    run_json,
    settings_summary,
)
from tests.screen import seen

TIMEOUT = 120


def _sweep(store: Store, loaded, model_dir, strategies: tuple[str, ...]) -> int:
    settings = SweepSettings(model=str(model_dir), device="cpu", strategies=strategies, fractions=(0.0, 0.5), limit=2,
                             val_samples=2, sim_samples=2, seq_len=16)
    run_id = start_sweep(store, settings)
    with store.running(run_id) as run:
        run.result = run_sweep(loaded, settings, store, run_id)
    return run_id


@pytest.fixture(scope="module")
def runs(tiny_llama, tiny_llama_dir, tmp_path_factory) -> dict[str, int]:
    """One run of each kind in the default store (the one the app's pages open)."""
    store = Store()
    ids = {
        "similarity": cached_distances(tiny_llama, "embedded", 2, 16, store=store)[0],
        "metrics": cached_scores(tiny_llama, "embedded", 2, 16, store=store)[0],
        "sweep": _sweep(store, tiny_llama, tiny_llama_dir, ("simple", "top-cut")),
        "sweep2": _sweep(store, tiny_llama, tiny_llama_dir, ("simple",)),
    }
    pruned = prune_block(tiny_llama, 1, 2)
    folder = save_pruned(pruned.loaded, tmp_path_factory.mktemp("pruned"), {"kind": "prune"})
    (folder / "mergekit.yaml").write_text(mergekit_yaml(str(tiny_llama_dir), 4, pruned.block))
    block = {"start": 1, "n": 2, "num_layers": 4, "removed": [1, 2]}
    ids["prune"] = store.create_run("prune", "tiny", {"model": str(tiny_llama_dir), "start": 1, "n": 2})
    store.update_run(ids["prune"], status="done", result={"model": str(tiny_llama_dir), "block": block, "folder": str(folder)})
    ids["failed"] = store.create_run("heal", "tiny", {"model": {"source": str(tiny_llama_dir)}, "start": 1, "n": 1})
    store.update_run(ids["failed"], status="failed", error="Out of memory while healing with batch size 64.")
    return ids


def _csv(run_id: int) -> pd.DataFrame:
    store = Store()
    run = store.get_run(run_id)
    return pd.read_csv(io.StringIO(metrics_frame(run, store.events(run_id)).to_csv(index=False)))


def test_csv_exports_parse_back_to_the_stored_numbers(runs):
    store = Store()
    similarity = _csv(runs["similarity"])
    distances = store.get_run(runs["similarity"]).result["distances"]
    assert len(similarity) == sum(len(row) for row in distances) == 4 + 3 + 2 + 1
    assert sorted(similarity.distance) == pytest.approx(sorted(d for row in distances for d in row))

    sweep = _csv(runs["sweep"])
    points = sweep_points(store, runs["sweep"])
    assert len(sweep) == len(points) == 4
    assert sorted(sweep.accuracy) == sorted(p["accuracy"] for p in points)
    assert set(sweep.strategy) == {"simple", "top-cut"}

    metrics = _csv(runs["metrics"])
    assert len(metrics) == 4 + 3 + 2  # n = 1..3, l = 0..L-n
    assert {"l", "n", "last_token", "all_tokens", "block_influence"} <= set(metrics.columns)

    prune = _csv(runs["prune"])
    assert prune["block.start"].tolist() == [1] and prune["block.n"].tolist() == [2]


def test_headlines_and_settings(runs):
    store = Store()
    assert headline(store.get_run(runs["failed"])) == "failed: Out of memory while healing with batch size 64."
    assert headline(store.get_run(runs["prune"])) == "removed layers 1-2 of 4"
    assert headline(store.get_run(runs["sweep"])).startswith("4 points; at chance from: simple")
    assert headline(store.get_run(runs["similarity"])).startswith("n=1: best block from layer")
    assert "strategies=[\"simple\", \"top-cut\"]" in settings_summary(store.get_run(runs["sweep"]))


def test_run_json_and_model_exports(runs, tiny_llama_dir):
    store = Store()
    sweep = store.get_run(runs["sweep"])
    document = json.loads(run_json(sweep, store.events(sweep.id)))
    assert document["id"] == sweep.id and document["settings"] == sweep.settings
    assert [e for e in document["events"] if e.get("kind") == "point"] == sweep_points(store, sweep.id)

    figures = run_figures(sweep, store.events(sweep.id))
    assert len(figures) == 2  # accuracy and normalized loss
    html = figures_html(figures)
    assert html.count('class="plotly-graph-div"') == 2 and html.count("plotly.js v") == 1  # plotly.js inlined once

    prune = store.get_run(runs["prune"])
    assert run_figures(prune, []) == []
    folder = model_folder(prune)
    assert folder is not None and (folder / "config.json").is_file()
    yaml = mergekit_text(prune)
    assert "layer_range: [0, 1]" in yaml and "layer_range: [3, 4]" in yaml
    rebuilt = mergekit_text(replace(prune, result={**prune.result, "folder": None}))
    assert rebuilt == yaml  # without the folder, the YAML is rebuilt from the block and model id
    assert model_folder(sweep) is None and mergekit_text(sweep) is None


@pytest.fixture()
def runs_page(runs) -> AppTest:
    at = AppTest.from_file("../app.py", default_timeout=TIMEOUT)
    at.run()
    at.switch_page("pages/runs.py").run()
    assert not at.exception
    return at


def test_runs_page_lists_and_compares(runs_page, runs):
    at = runs_page
    listed = at.dataframe[0].value
    assert set(runs.values()) <= set(listed["id"])
    at.selectbox(key="runs_selected").set_value(runs["sweep"]).run()
    at.selectbox(key="runs_other").set_value(runs["sweep2"]).run()
    assert not at.exception
    diff = next(d.value for d in at.dataframe if "setting" in d.value.columns).set_index("setting")
    assert "strategies" in diff.index and "limit" not in diff.index  # only the settings that differ
    assert len(at.get("plotly_chart")) == 5  # both sweeps on shared axes, then accuracy and loss of each


def test_delete_asks_first_and_a_deleted_run_gives_a_message(runs_page, runs):
    at, store = runs_page, Store()
    at.selectbox(key="runs_selected").set_value(runs["failed"]).run()
    at.button(key="runs_delete").click().run()
    assert store.get_run(runs["failed"]).status == "failed"  # not yet: the page asks first
    assert any("Delete run #" in w.value for w in at.warning)
    at.button(key="runs_delete_yes").click().run()
    assert runs["failed"] not in [r.id for r in store.list_runs()]
    assert not at.exception

    at.selectbox(key="runs_selected").set_value(runs["sweep2"]).run()
    store.delete_run(runs["sweep2"])  # deleted elsewhere (another tab, the CLI) while selected here
    at.run()
    assert not at.exception
    assert any(f"Run #{runs['sweep2']} no longer exists" in w.value for w in at.warning)


def test_sweep_page_with_a_deleted_run(tiny_llama, tiny_llama_dir):
    """The sweep page remembers its run in the session; once deleted, it says so and forgets it."""
    at = AppTest.from_file("../app.py", default_timeout=TIMEOUT)
    at.run()
    at.switch_page("pages/sweep.py").run()
    at.radio(key="model_kind").set_value("Hugging Face id / local path").run()
    at.text_input(key="model_path").set_value(str(tiny_llama_dir)).run()
    store = Store()
    doomed = _sweep(store, tiny_llama, tiny_llama_dir, ("top-cut",))
    at.session_state["sweep_run"] = doomed
    at.run()
    assert not at.exception and any("2 / 2 points" in seen(s.value) for s in at.success)
    store.delete_run(doomed)
    at.run()
    assert not at.exception
    assert any(f"Run {doomed} does not exist" in seen(w.value) for w in at.warning)

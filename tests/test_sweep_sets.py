"""The sweep with the strategies that choose sets and sub-layers: every point is what its set's pruned
model measures directly (no prefix reuse), the points record their indices, linear repair is
skipped (and said so) where the set is not one block; and the figures draw the new strategies."""

from __future__ import annotations

import pytest

from explorer.analysis.similarity import SimilarityResult
from explorer.analysis.strategies import choose_layers
from explorer.analysis.sublayers import SublayerScores, compute_sublayer_scores
from explorer.evaluation.evaluate import quick_eval
from explorer.experiments.sweep import SweepSettings, run_sweep, start_sweep, sweep_points
from explorer.lm.blocks import Block, LayerSet
from explorer.lm.data import make_samples
from explorer.lm.layers import pruned_view
from explorer.state.cache import strategy_context
from explorer.state.store import Store, of_kind
from explorer.views.figures.similarity import heatmap_figure
from explorer.views.figures.sublayers import sublayer_figure
from explorer.views.figures.sweep import accuracy_figure

STRATEGIES = ("block-influence", "iterative-loss", "attention-drop", "mlp-drop")


@pytest.fixture(scope="module")
def swept(tiny_llama, tiny_llama_dir, tmp_path_factory):
    store = Store(tmp_path_factory.mktemp("sets") / "runs.sqlite")
    settings = SweepSettings(model=str(tiny_llama_dir), device="cpu", strategies=STRATEGIES, fractions=(0.0, 0.5), limit=4,
                             val_samples=2, sim_samples=3, seq_len=16, batch_size=2, repair="linear")
    run_id = start_sweep(store, settings)
    run_sweep(tiny_llama, settings, store, run_id)
    return store, settings, run_id


def test_points_equal_their_sets_measured_directly(swept, tiny_llama):
    store, settings, run_id = swept
    points = {(p["strategy"], p["n"], p["repair"]): p for p in sweep_points(store, run_id)}
    context = strategy_context(tiny_llama, STRATEGIES, settings.text, settings.sim_samples, settings.seq_len, 2, store)
    for strategy in STRATEGIES:
        layers = choose_layers(strategy, 2, context)
        point = points[(strategy, 2, "none")]
        direct = quick_eval(pruned_view(tiny_llama, layers), settings)
        assert point["val_loss"] == pytest.approx(direct["val_loss"], abs=1e-5)
        assert point["accuracy"] == direct["accuracy"] and point["start"] == layers.start
        if layers.contiguous:
            assert "layers" not in point
        else:
            assert (tuple(point["layers"]), tuple(point["attention"]), tuple(point["mlp"])) == (
                layers.removed, layers.attention, layers.mlp)
    assert len(points[("attention-drop", 2, "none")]["attention"]) == 2 == len(points[("mlp-drop", 2, "none")]["mlp"])
    phases = " ".join(e["phase"] for e in of_kind(store.events(run_id), "phase"))
    assert "attention-drop n=2: no linear repair for a set that is not one block" in phases
    assert "choosing layers: iterative-loss" in phases


def test_sub_layer_scores_drive_the_drop(tiny_llama, swept):
    store, settings, _ = swept
    samples = make_samples(tiny_llama.tokenizer, settings.text, settings.sim_samples, settings.seq_len).ids
    scores = compute_sublayer_scores(tiny_llama, samples, 2)
    context = strategy_context(tiny_llama, ["mlp-drop"], settings.text, settings.sim_samples, settings.seq_len, 2, store)
    assert choose_layers("mlp-drop", 2, context) == LayerSet((), 4, mlp=scores.lowest("mlp", 2))


def test_figures_draw_sets_and_sublayers(swept):
    store, _, run_id = swept
    accuracy = accuracy_figure(sweep_points(store, run_id))
    assert {"block-influence", "attention-drop", "mlp-drop"} <= {trace.name for trace in accuracy.data}
    result = SimilarityResult("toy", 4, [[0.5, 0.2, 0.3, 0.1], [0.4, 0.3, 0.2], [0.5, 0.6], [0.9]], samples=1)
    marked = {"block-influence": [LayerSet((0,), 4), LayerSet((0, 2), 4), Block(0, 3, 4)]}
    fig = heatmap_figure(result, chosen=marked)
    trace = next(t for t in fig.data if t.name.startswith("block-influence"))
    assert list(trace.x) == [0, 0, 2, 0, 1, 2] and list(trace.y) == [1, 2, 2, 3, 3, 3] and trace.customdata is None
    sub = SublayerScores("toy", 4, 1, 4, [0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1], [0.3, 0.1, 0.2, 0.4], [0.2, 0.4, 0.1, 0.3])
    fig = sublayer_figure(sub, "influence", k=2)
    assert [list(row) for row in fig.data[0].z] == [sub.attention_influence, sub.mlp_influence]
    assert [list(t.x) for t in fig.data[1:]] == [[1, 2], [0, 2]]

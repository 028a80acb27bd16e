"""One best block everywhere, and the bootstrap of the distances over calibration samples.

The bootstrap is checked on real forward passes of a tiny llama (no new pass: each sample's
own distances are resampled) against properties that must hold whatever the draws: every
resample chooses exactly one start per n, a single repeated sample has nothing to vary, and a
layer that does nothing is the block every resample picks.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from explorer.analysis.bootstrap import bootstrap, choice_notes, optimal_with_uncertainty, result_json, summary
from explorer.analysis.similarity import SimilarityResult, compute_distances
from explorer.analysis.strategies import Context, choose_layers
from explorer.kinds import headline
from explorer.lm.layers import decoder_layers
from explorer.lm.models import LoadedModel
from explorer.state.store import Run
from explorer.views.figures.similarity import NOT_CHOSEN, distances_frame, heatmap_figure, min_distance_figure, row_scaled

TEXTS = [
    "The cat sat on the mat while the dog slept by the door.",
    "Police in Melbourne arrested two men after a car chase on Sunday.",
    "The central bank raised interest rates for the third time this year.",
    "Bushfires burned across the state as temperatures passed forty degrees.",
    "The team won the final after a late goal in extra time.",
    "Scientists found water ice in a crater near the moon's south pole.",
]

# Row n=1 whose plain minimum is the final layer's block [3, 4); row n=2 likewise ([2, 4)).
TOY = SimilarityResult("toy", 4, [[0.5, 0.2, 0.3, 0.1], [0.4, 0.3, 0.2], [0.5, 0.6], [0.9]], samples=1)


def _ids(loaded: LoadedModel, texts: list[str]) -> list[list[int]]:
    return loaded.tokenizer(texts)["input_ids"]


@pytest.fixture(scope="module")
def tiny_result(tiny_llama) -> SimilarityResult:
    return compute_distances(tiny_llama, _ids(tiny_llama, TEXTS), batch_size=3)


def test_best_block_keeps_the_final_layer_in_every_view():
    L = TOY.num_layers
    for n in range(1, L):
        row = TOY.distances[n - 1]
        expected = int(np.argmin(row[: L - n]))  # independent: numpy over starts whose block ends before layer L-1
        assert TOY.best_block(n).start == expected == choose_layers("similarity", n, Context(L, TOY)).start
        assert TOY.optimal[n - 1] == {"n": n, "layer": expected, "distance": row[expected]}
    assert TOY.unrestricted_minima == [{"n": 1, "layer": 3, "distance": 0.1}, {"n": 2, "layer": 2, "distance": 0.2}]
    frame = distances_frame(TOY)
    assert frame[frame.is_optimal][["n", "l"]].values.tolist() == [[1, 1], [2, 1], [3, 0]]
    fig = heatmap_figure(TOY)
    stars = next(t for t in fig.data if t.name.startswith("best block"))
    circles = next(t for t in fig.data if "not chosen" in t.name)
    assert [tuple(c[:2]) for c in stars.customdata] == [(1, 1), (1, 2), (0, 3)]
    assert [tuple(c[:2]) for c in circles.customdata] == [(3, 1), (2, 2)]
    assert all(NOT_CHOSEN in c[4] for c in circles.customdata)
    # The Runs headline agrees, also for a run stored with the old unrestricted "optimal" list.
    old = {"model": "toy", "num_layers": 4, "distances": TOY.distances, "samples": 1,
           "optimal": [{"n": 1, "layer": 3, "distance": 0.1}]}
    assert headline(Run(1, "similarity", None, "done", "toy", {}, old, None, None, 0.0, 0.0)).startswith(
        "n=1: best block from layer 1")


def test_stability_is_one_choice_per_resample(tiny_result):
    boot = bootstrap(tiny_result, draws=50, seed=3)
    L = tiny_result.num_layers
    assert len(boot.stability) == L - 1
    for n, row in enumerate(boot.stability, 1):
        assert len(row) == L - n and all(0 <= f <= 1 for f in row)
        assert sum(row) <= 1 + 1e-9
        assert sum(row) == pytest.approx(1.0)  # every resample chooses exactly one start
    for n, row in enumerate(tiny_result.distances, 1):
        for l, distance in enumerate(row):
            assert boot.ci_low[n - 1][l] <= boot.ci_high[n - 1][l]
            assert boot.ci_low[n - 1][l] - 1e-6 <= distance <= boot.ci_high[n - 1][l] + 1e-6
    assert bootstrap(tiny_result, draws=50, seed=3) == boot  # seeded
    # Each sample's rows average to the stored distances: resampling the per-sample rows is the real bootstrap.
    mean = np.mean([np.concatenate(rows) for rows in tiny_result.per_sample], axis=0)
    assert np.allclose(mean, np.concatenate(tiny_result.distances), atol=1e-6)


def test_single_repeated_sample_has_zero_width(tiny_llama):
    ids = _ids(tiny_llama, TEXTS[:1])
    for samples in (ids, ids * 3):
        boot = bootstrap(compute_distances(tiny_llama, samples, batch_size=3), draws=40)
        widths = [hi - lo for low, high in zip(boot.ci_low, boot.ci_high) for lo, hi in zip(low, high)]
        assert max(widths) <= 1e-12
        assert all(max(row) == 1.0 for row in boot.stability)


def test_a_layer_that_does_nothing_is_chosen_in_every_resample(tiny_llama):
    """Zero layer 2's attention and MLP output projections: it passes its input through unchanged,
    so d(x^2, x^3) = 0 on every sample and the n = 1 block [2, 3) wins every resample."""
    model = copy.deepcopy(tiny_llama.model)
    with torch.no_grad():
        layer = decoder_layers(model)[2]
        layer.self_attn.o_proj.weight.zero_()
        layer.mlp.down_proj.weight.zero_()
    identity = LoadedModel(model, tiny_llama.tokenizer, "identity-layer-2", "identity-layer-2")
    result = compute_distances(identity, _ids(tiny_llama, TEXTS), batch_size=3)
    boot = bootstrap(result, draws=100)
    assert result.best_block(1).start == 2
    assert boot.stability[0][2] >= 0.99
    assert optimal_with_uncertainty(result, boot)[0]["stability"] >= 0.99
    assert not any(note.startswith("Unstable") for note in choice_notes(result, boot, 1))


def test_json_notes_and_old_runs(tiny_result):
    boot = bootstrap(tiny_result, draws=30)
    data = result_json(tiny_result, boot)
    for entry in data["optimal"]:
        n, layer = entry["n"], entry["layer"]
        assert entry["stability"] == boot.stability[n - 1][layer]
        assert entry["distance_ci"] == [boot.ci_low[n - 1][layer], boot.ci_high[n - 1][layer]]
    # A run stored before per-sample data: same best blocks, no intervals, and the page says why.
    old = {k: v for k, v in tiny_result.to_json().items() if k not in ("per_sample", "seq_len", "source")}
    again = SimilarityResult.from_json(old)
    assert again.optimal == tiny_result.optimal and bootstrap(again) is None
    assert result_json(again, None)["bootstrap"] is None
    assert "run it again for intervals" in summary(again, None)
    assert min_distance_figure(again).data[0].error_y.array is None
    # Shallow: a best block in the first quarter of the layers is flagged in words.
    assert any(note.startswith("Shallow") for note in choice_notes(TOY, None, 3))  # l* = 0 of 4 layers
    assert not any(note.startswith("Shallow") for note in choice_notes(TOY, None, 1))  # l* = 1 is not < 4/4


def test_paper_style_rescales_each_row(tiny_result):
    fig = heatmap_figure(tiny_result, scaled=True)
    cells = fig.data[0]
    colours = np.asarray(cells.marker.color)
    n = np.asarray(cells.customdata)[:, 1].astype(int)
    for k, row in enumerate(tiny_result.distances, 1):
        expected = (np.array(row) - min(row)) / (max(row) - min(row)) if len(row) > 1 else np.zeros(1)
        assert np.allclose(colours[n == k], expected)
    assert "rescaled" in cells.marker.colorbar.title.text
    plain = heatmap_figure(tiny_result)
    assert np.allclose(np.asarray(plain.data[0].marker.color), distances_frame(tiny_result).distance)
    assert row_scaled(distances_frame(TOY)).between(0, 1).all()


@pytest.mark.slow  # pins a README figure on the embedded model
def test_readme_science_figures_at_the_teaching_calibration(embedded):
    """README, 'What the embedded model shows': 16 documents x 64 tokens of the embedded corpus (the
    teaching sweep's heatmap) leave 11 of the 29 best blocks unstable and 27 shallow."""
    from explorer.lm.data import make_samples

    result = compute_distances(embedded, make_samples(embedded.tokenizer, "embedded", 16, 64).ids, batch_size=8)
    boot = bootstrap(result)
    assert summary(result, boot).startswith("27 of 29 block sizes have a shallow best block")
    assert "; 11 are unstable" in summary(result, boot)
    assert [result.best_block(n).start for n in (7, 9, 10, 22)] == [3, 11, 2, 2]
    assert any(note.startswith("Unstable") for note in choice_notes(result, boot, 7))

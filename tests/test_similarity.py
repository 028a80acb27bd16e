"""The all-(l, n) engine against an independent, unbatched, one-pair-at-a-time computation.

The reference runs the full CausalLM on one sample at a time (no padding) with
`output_hidden_states=True` and loops over every (l, n) pair in float64. HF's last hidden
state comes AFTER the final norm, while the paper's x^L is the last decoder layer's output
BEFORE it, so the reference takes x^L from a hook on the last layer and checks that HF's
last entry is indeed that state normalized.
"""

from __future__ import annotations

import math

import pytest
import torch

from explorer.analysis.similarity import SimilarityResult, compute_distances
from explorer.core.errors import ExplorerError
from explorer.lm.data import make_samples
from explorer.lm.layers import decoder_layers, final_norm
from explorer.lm.models import LoadedModel
from explorer.state.cache import cached_distances
from tests.families import FAMILIES, tiny_family_model

TOL = 1e-4


def residual_states(model: torch.nn.Module, ids: list[int]) -> list[torch.Tensor]:
    """x^0 .. x^L at the last token of one unpadded sample, in float64."""
    layers = decoder_layers(model)
    captured = []
    handle = layers[-1].register_forward_hook(
        lambda _m, _a, out: captured.append(out[0] if isinstance(out, tuple) else out)
    )
    try:
        with torch.no_grad():
            out = model(input_ids=torch.tensor([ids]), output_hidden_states=True, use_cache=False)
    finally:
        handle.remove()
    hidden = out.hidden_states
    assert len(hidden) == len(layers) + 1
    last = captured[0][0, -1]
    with torch.no_grad():
        normed = final_norm(model)(captured[0])[0, -1]
    # HF's final entry is normalized: using it as x^L would be the wrong definition.
    torch.testing.assert_close(hidden[-1][0, -1], normed, rtol=1e-4, atol=1e-4)
    return [h[0, -1].double() for h in hidden[:-1]] + [last.double()]


def reference_distances(model: torch.nn.Module, samples: list[list[int]]) -> list[list[float]]:
    """distances[n-1][l] by plain float64 math, one pair and one sample at a time."""
    per_sample = [residual_states(model, ids) for ids in samples]
    num_layers = len(per_sample[0]) - 1
    rows = []
    for n in range(1, num_layers + 1):
        row = []
        for l in range(num_layers - n + 1):
            total = 0.0
            for states in per_sample:
                a, b = states[l], states[l + n]
                cos = float(a @ b / (a.norm() * b.norm()))
                total += math.acos(max(-1.0, min(1.0, cos))) / math.pi
            row.append(total / len(per_sample))
        rows.append(row)
    return rows


def assert_rows_close(actual: list[list[float]], expected: list[list[float]]) -> None:
    assert [len(r) for r in actual] == [len(r) for r in expected]
    worst = max(abs(a - e) for ra, re in zip(actual, expected) for a, e in zip(ra, re))
    assert worst <= TOL, f"largest difference {worst:.2e}"


def ragged_samples(tokenizer, lengths: list[int]) -> list[list[int]]:
    """Real text cut to different lengths, so batches need padding."""
    docs = make_samples(tokenizer, "embedded", len(lengths), max(lengths)).ids
    return [ids[:length] for ids, length in zip(docs, lengths)]


def test_engine_matches_reference_on_embedded_model(embedded):
    samples = ragged_samples(embedded.tokenizer, [24, 17, 31])
    result = compute_distances(embedded, samples, batch_size=2)
    assert result.num_layers == 30 and result.samples == 3
    assert_rows_close(result.distances, reference_distances(embedded.model, samples))


def test_engine_matches_reference_on_tiny_llama(tiny_llama):
    samples = ragged_samples(tiny_llama.tokenizer, [40, 16, 33, 25, 40])
    result = compute_distances(tiny_llama, samples, batch_size=3)
    assert result.num_layers == 4 and result.samples == 5
    assert_rows_close(result.distances, reference_distances(tiny_llama.model, samples))


def test_padding_leaves_distances_unchanged(tiny_llama, embedded):
    """A short sample right-padded inside a batch of longer ones gives what it gives alone:
    the batch mean equals the mean of the samples run one by one."""
    for loaded in (tiny_llama, embedded):
        short, *longer = ragged_samples(loaded.tokenizer, [18, 40, 33])
        alone = [compute_distances(loaded, [ids], batch_size=1).distances for ids in (short, *longer)]
        batched = compute_distances(loaded, [short, *longer], batch_size=3).distances
        mean = [[sum(a[n][l] for a in alone) / 3 for l in range(len(row))] for n, row in enumerate(batched)]
        assert_rows_close(batched, mean)


def test_rows_shapes_and_range(tiny_llama):
    result = compute_distances(tiny_llama, ragged_samples(tiny_llama.tokenizer, [20, 30]), batch_size=2)
    L = result.num_layers
    assert [len(row) for row in result.distances] == [L - n + 1 for n in range(1, L + 1)]
    assert all(0.0 <= d <= 1.0 for row in result.distances for d in row)


def test_optimal_and_simple_blocks(embedded):
    result = compute_distances(embedded, ragged_samples(embedded.tokenizer, [32, 28]), batch_size=2)
    L = result.num_layers
    for n, entry in enumerate(result.optimal, 1):
        row = torch.tensor(result.distances[n - 1][: L - n])  # blocks that keep the final layer
        assert entry["n"] == n
        assert entry["layer"] == int(torch.argmin(row))
        assert entry["distance"] == pytest.approx(float(row.min()))
        assert 0 <= entry["layer"] < L - n
    assert len(result.optimal) == L - 1
    assert result.simple == [{"n": n, "layer": L - 1 - n} for n in range(1, L)]
    # The simple block for n ends just before the final layer: layers [L-1-n, L-1).
    assert all(e["layer"] + e["n"] == L - 1 for e in result.simple)


def test_json_round_trip(tiny_llama):
    result = compute_distances(tiny_llama, ragged_samples(tiny_llama.tokenizer, [20]), batch_size=1)
    data = result.to_json()
    assert {"model", "num_layers", "distances", "optimal", "unrestricted_minima", "simple", "samples", "per_sample",
            "seq_len", "source"} <= set(data)
    again = SimilarityResult.from_json(data)
    assert again == result and again.optimal == result.optimal


def test_progress_and_hooks_removed(tiny_llama):
    layers = decoder_layers(tiny_llama.model)
    hooks_before = [(dict(layer._forward_hooks), dict(layer._forward_pre_hooks)) for layer in layers]
    seen = []
    compute_distances(tiny_llama, ragged_samples(tiny_llama.tokenizer, [20, 21, 22, 23, 24]), 2, lambda d, t: seen.append((d, t)))
    assert seen == [(2, 5), (4, 5), (5, 5)]
    assert [(dict(layer._forward_hooks), dict(layer._forward_pre_hooks)) for layer in layers] == hooks_before


def test_no_samples_is_a_user_error(tiny_llama):
    with pytest.raises(ExplorerError):
        compute_distances(tiny_llama, [], batch_size=2)


def test_cached_distances_come_from_the_store(tiny_llama, store):
    first_id, first, from_cache = cached_distances(tiny_llama, "embedded", 4, 32, batch_size=2, store=store)
    assert not from_cache
    assert store.get_run(first_id).status == "done"
    second_id, second, from_cache = cached_distances(tiny_llama, "embedded", 4, 32, batch_size=4, store=store)
    assert from_cache and second_id == first_id
    assert second.distances == first.distances and second.optimal == first.optimal
    # Different data is a different key: computed afresh, and the numbers differ.
    third_id, third, from_cache = cached_distances(tiny_llama, "embedded", 4, 24, batch_size=2, store=store)
    assert not from_cache and third_id != first_id and third.distances != first.distances
    # A cached result equals a direct computation on the same samples.
    samples = make_samples(tiny_llama.tokenizer, "embedded", 4, 32).ids
    assert_rows_close(first.distances, compute_distances(tiny_llama, samples, batch_size=1).distances)


def test_unusable_text_leaves_no_run(tiny_llama, store, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("Too short.\n\nAlso short.\n")
    with pytest.raises(ExplorerError):
        cached_distances(tiny_llama, str(short), 2, 32, store=store)
    assert store.list_runs(kind="similarity") == []  # failed before a run was created: nothing half-written


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_engine_matches_reference_across_families(family, embedded):
    """The engine must find the residual stream in each family and agree with the reference."""
    model = tiny_family_model(family, len(embedded.tokenizer))
    assert len(decoder_layers(model)) == 3 and final_norm(model) is not None
    loaded = LoadedModel(model, embedded.tokenizer, family, f"test:{family}")
    samples = ragged_samples(embedded.tokenizer, [20, 12, 17])
    result = compute_distances(loaded, samples, batch_size=3)
    assert_rows_close(result.distances, reference_distances(model, samples))

"""Metric comparison against independent computations on the tiny random llama.

The reference runs each sample alone (no padding), captures x^0..x^L with plain output hooks
on the embedding and every layer, and loops over tokens and layer pairs in float64 Python math.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from explorer.analysis.metrics import MetricScores, compute_scores, ranks, spearman
from explorer.analysis.similarity import compute_distances
from explorer.analysis.strategies import Context, choose_layers
from explorer.core.errors import ExplorerError
from explorer.lm.data import make_samples
from explorer.state.cache import cached_brute_force, cached_scores


@pytest.fixture(scope="module")
def ragged_samples(tiny_llama) -> list[list[int]]:
    """Real text of different lengths, so batches of 3 carry padding."""
    ids = make_samples(tiny_llama.tokenizer, "embedded", 5, 40).ids
    return [sample[: 14 + 6 * i] for i, sample in enumerate(ids)]


def _states_alone(loaded, sample: list[int]) -> list[np.ndarray]:
    """x^0 (embedding output) and x^(i+1) (output of layer i) for one unpadded sample."""
    model = loaded.model
    captured: list[np.ndarray] = []

    def keep(_module, _args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        captured.append(hidden[0].double().numpy())

    modules = [model.get_input_embeddings(), *model.model.layers]
    handles = [m.register_forward_hook(keep) for m in modules]
    try:
        with torch.no_grad():
            model(input_ids=torch.tensor([sample]), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return captured


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b) / math.sqrt(float(a @ a) * float(b @ b))


def _angle(a: np.ndarray, b: np.ndarray) -> float:
    return math.acos(max(-1.0, min(1.0, _cos(a, b)))) / math.pi


def _reference(loaded, samples):
    num_layers = loaded.num_layers
    last = np.zeros((num_layers + 1, num_layers + 1))
    every = np.zeros_like(last)
    cos_sum = np.zeros(num_layers)
    tokens = 0
    for sample in samples:
        states = _states_alone(loaded, sample)
        for i in range(num_layers + 1):
            for j in range(num_layers + 1):
                last[i, j] += _angle(states[i][-1], states[j][-1])
                every[i, j] += sum(_angle(states[i][t], states[j][t]) for t in range(len(sample)))
        for i in range(num_layers):
            for t in range(len(sample)):
                cos_sum[i] += _cos(states[i][t], states[i + 1][t])
        tokens += len(sample)
    return last / len(samples), every / tokens, 1 - cos_sum / tokens


@pytest.fixture(scope="module")
def scores(tiny_llama, ragged_samples) -> MetricScores:
    return compute_scores(tiny_llama, ragged_samples, batch_size=3)


def test_one_pass_metrics_match_plain_loops(tiny_llama, ragged_samples, scores):
    last, every, influence = _reference(tiny_llama, ragged_samples)
    num_layers = tiny_llama.num_layers
    assert scores.tokens == sum(len(s) for s in ragged_samples)
    for n in range(1, num_layers + 1):
        for l in range(num_layers - n + 1):
            assert scores.last_token[n - 1][l] == pytest.approx(last[l, l + n], abs=2e-5)
            assert scores.all_tokens[n - 1][l] == pytest.approx(every[l, l + n], abs=2e-5)
    assert scores.layer_influence == pytest.approx(list(influence), abs=2e-5)
    # the random model is not degenerate: padding-free all-token and last-token scores differ
    assert max(abs(a - b) for a, b in zip(scores.all_tokens[0], scores.last_token[0])) > 1e-3


def test_block_scores_and_choices(scores):
    n = 2
    by_metric = scores.scores(n)
    influence = scores.layer_influence
    assert by_metric["block_influence"] == pytest.approx([influence[l] + influence[l + 1] for l in range(3)])
    choices = scores.choices(n)
    for name, values in by_metric.items():
        assert values[choices[name]] == min(values)
    shortgpt = choose_layers("block-influence", 2, Context(scores.num_layers, influence=influence))
    assert list(shortgpt.removed) == sorted(np.argsort(influence[:-1])[:2].tolist())  # the final layer is kept


def test_last_token_metric_is_the_similarity_engine(tiny_llama, ragged_samples, scores):
    reference = compute_distances(tiny_llama, ragged_samples, 2).distances
    for ours, theirs in zip(scores.last_token, reference, strict=True):
        assert ours == pytest.approx(theirs, abs=1e-6)


def test_spearman_against_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for _ in range(20):
        a = rng.integers(0, 5, size=9).astype(float)  # ties
        b = rng.normal(size=9)
        assert spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic)
    assert ranks([3.0, 1.0, 3.0, 2.0]).tolist() == [3.5, 1.0, 3.5, 2.0]
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_rank_correlation_table(scores):
    table = scores.rank_correlations(2)
    stats = pytest.importorskip("scipy.stats")
    values = scores.scores(2)
    for a in table:
        assert table[a][a] == pytest.approx(1.0)
        for b in table:
            assert table[a][b] == pytest.approx(table[b][a])
            assert table[a][b] == pytest.approx(stats.spearmanr(values[a], values[b]).statistic)


def test_correlation_figure_shows_the_table(scores):
    """The page's annotated heatmap carries exactly the table's values, labelled by metric."""
    from explorer.analysis.metrics import METRICS
    from explorer.views.figures.metrics import correlation_figure

    table = scores.rank_correlations(2)
    heat = correlation_figure(scores, 2).data[0]
    assert list(heat.x) == list(heat.y) == [METRICS[name] for name in table]
    assert [list(row) for row in heat.z] == [[table[a][b] for b in table] for a in table]
    assert heat.text[0][1] == f"{table[list(table)[0]][list(table)[1]]:.2f}"


def test_cached_scores_round_trip(tiny_llama, store):
    run_id, first, hit = cached_scores(tiny_llama, "embedded", 3, 24, 2, store=store)
    again_id, second, hit_again = cached_scores(tiny_llama, "embedded", 3, 24, 2, store=store)
    assert (hit, hit_again, again_id) == (False, True, run_id)
    assert second == first
    assert store.get_run(run_id).kind == "metrics"


def test_bad_input(tiny_llama, scores):
    with pytest.raises(ExplorerError, match="Block size"):
        scores.scores(0)
    with pytest.raises(ExplorerError, match="Block size"):
        scores.scores(tiny_llama.num_layers)
    with pytest.raises(ExplorerError, match="No calibration samples"):
        compute_scores(tiny_llama, [])


def _loss_skipping(loaded, samples: list[list[int]], skipped: range) -> float:
    """Held-out loss with the skipped layers made identities by hooks (no pruning), one sample at a time."""
    layers = loaded.model.model.layers

    def identity(_module, args, kwargs, output):
        hidden = args[0] if args else kwargs["hidden_states"]
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    handles = [layers[i].register_forward_hook(identity, with_kwargs=True) for i in skipped]
    total = count = 0.0
    try:
        with torch.no_grad():
            for sample in samples:
                logits = loaded.model(input_ids=torch.tensor([sample]), use_cache=False).logits[0].double()
                logprobs = torch.log_softmax(logits, dim=-1)
                total -= sum(float(logprobs[t, sample[t + 1]]) for t in range(len(sample) - 1))
                count += len(sample) - 1
    finally:
        for handle in handles:
            handle.remove()
    return total / count


def test_brute_force_matches_skipping_layers(tiny_llama, store):
    heldout = make_samples(tiny_llama.tokenizer, "embedded", 4, 24, "heldout").ids
    base = _loss_skipping(tiny_llama, heldout, range(0))
    run_id, result, hit = cached_brute_force(tiny_llama, 2, "embedded", 4, 24, batch_size=3, store=store)
    assert not hit and result["n"] == 2
    assert result["base_loss"] == pytest.approx(base, rel=1e-4)
    expected = [_loss_skipping(tiny_llama, heldout, range(l, l + 2)) - base for l in range(3)]
    assert result["loss_increase"] == pytest.approx(expected, rel=1e-3, abs=1e-4)
    assert tiny_llama.num_layers == 4  # measured on copies
    scores = compute_scores(tiny_llama, heldout, 3)
    scores.brute_force = result
    assert scores.choices(2)["brute_force"] == int(np.argmin(expected))
    assert set(scores.rank_correlations(2)) == {"last_token", "all_tokens", "block_influence", "brute_force"}
    assert cached_brute_force(tiny_llama, 2, "embedded", 4, 24, batch_size=3, store=store)[2]


def test_metrics_page(tiny_llama_dir):
    """The page computes the one-pass metrics, shows each metric's block and the rank table for
    the chosen n, and adds the brute force on request."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file("../app.py", default_timeout=120)
    at.run()
    at.switch_page("pages/metrics.py").run()
    at.radio(key="model_kind").set_value("Hugging Face id / local path").run()
    at.text_input(key="model_path").set_value(str(tiny_llama_dir)).run()
    at.number_input(key="met_samples").set_value(3)
    at.number_input(key="met_seq_len").set_value(16)
    at.button(key="met_run").click().run()
    at.slider(key="met_n").set_value(2).run()
    assert not at.exception and not at.error

    def tables():
        """The choices table and the size of the rank-correlation heatmap (a plotly chart)."""
        import json

        choices = next(d.value for d in at.dataframe if "prunes" in d.value.columns)
        specs = [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]
        heatmap = next(s["data"][0] for s in specs if s["data"][0]["type"] == "heatmap")
        return choices, (len(heatmap["z"]), len(heatmap["z"][0]))

    choices, correlations = tables()
    assert len(choices) == 3 and correlations == (3, 3)
    assert all(p.startswith("layers ") for p in choices.prunes)
    at.button(key="met_brute").click().run()
    choices, correlations = tables()
    assert not at.exception and len(choices) == 4 and correlations == (4, 4)
    assert len(at.get("plotly_chart")) == 3  # scores per block, rank correlations, Block Influence

"""The strategy registry: every strategy's choice on a tiny model equals an independent computation
(a brute-force greedy loop, or the scores computed from a forward run by hand), and a strategy that
lacks what it needs says so in one sentence."""

from __future__ import annotations

import pytest
import torch

from explorer.analysis.metrics import compute_scores
from explorer.analysis.strategies import MODEL, NEEDS, STRATEGIES, Context, choose_layers, get_strategy, needs_of, strategies_help
from explorer.analysis.sublayers import compute_sublayer_scores
from explorer.core.errors import ExplorerError
from explorer.lm.blocks import Block, LayerSet
from explorer.lm.models import LoadedModel
from explorer.state.cache import strategy_context
from tests.by_hand import angle, cosine_sum, llama_by_hand, loss_by_hand
from tests.families import tiny_family_model

L = 5


@pytest.fixture(scope="module")
def tiny5(tiny_llama) -> LoadedModel:
    """A 5-layer random llama (weights large enough that layers matter) with the embedded vocabulary."""
    model = tiny_family_model("llama", len(tiny_llama.tokenizer), num_hidden_layers=L, initializer_range=0.1)
    return LoadedModel(model, tiny_llama.tokenizer, "tiny5", "tiny5")


@pytest.fixture(scope="module")
def samples(tiny5) -> list[list[int]]:
    texts = ["The capital of France is Paris, and the capital of Italy is Rome.", "Police arrested two men on Tuesday.",
             "One, two, three, four, five, six"]
    return [tiny5.tokenizer(text).input_ids for text in texts]


def test_every_strategy_is_registered_with_what_it_needs():
    assert list(STRATEGIES)[:3] == ["similarity", "simple", "top-cut"]
    assert {"block-influence", "iterative-loss", "iterative-angular", "attention-drop", "mlp-drop"} <= set(STRATEGIES)
    for name, strategy in STRATEGIES.items():
        assert strategy.name == name and strategy.description and strategy.label and strategy.needs <= set(NEEDS)
        assert name in strategies_help()
        assert choose_layers(name, 0, Context(30)).empty
    assert needs_of(["simple", "top-cut"]) == set() and needs_of(["iterative-loss"]) == {MODEL}
    assert [name for name, s in STRATEGIES.items() if s.removes_final] == ["top-cut"]
    with pytest.raises(ExplorerError, match="Unknown strategy 'random'"):
        get_strategy("random")
    with pytest.raises(ExplorerError, match="from 0 to 29"):
        choose_layers("simple", 30, Context(30))


@pytest.mark.parametrize(("name", "need"), [("similarity", "angular distances"), ("block-influence", "Block Influence"),
                                             ("iterative-loss", "forward passes"), ("attention-drop", "sub-layer")])
def test_a_missing_need_is_one_sentence(name, need):
    with pytest.raises(ExplorerError, match=need):
        choose_layers(name, 2, Context(30))


def test_block_influence_is_the_n_lowest_by_hand(tiny5, samples):
    """ShortGPT's choice: BI_l = 1 - mean over all tokens of cos(x^l, x^(l+1)), the n lowest except
    the final layer, from the hand-written forward; the strategy reads it from the batched pass."""
    cos, tokens = torch.zeros(L, dtype=torch.float64), 0
    for ids in samples:
        states = llama_by_hand(tiny5.model, ids)[0][0::2]  # x^0, x^1, ..., x^L
        cos += torch.stack([cosine_sum(states[l], states[l + 1]) for l in range(L)])
        tokens += len(ids)
    influence = (1 - cos / tokens).tolist()
    context = Context(L, influence=compute_scores(tiny5, samples, batch_size=2).layer_influence)
    assert context.influence == pytest.approx(influence, abs=1e-5)
    for n in range(1, L):
        expected = sorted(sorted(range(L - 1), key=influence.__getitem__)[:n])
        assert choose_layers("block-influence", n, context) == LayerSet(tuple(expected), L)


def test_iterative_loss_is_the_brute_force_greedy(tiny5, samples):
    """SLEB by brute force: at each step every remaining layer but the final is removed in turn, the
    loss computed by hand over the kept layers, the lowest taken; the strategy reuses prefixes."""
    order = get_strategy("iterative-loss").removal_order(tiny5, samples, batch_size=2)
    removed: list[int] = []
    for step in range(L - 1):
        kept = [i for i in range(L) if i not in removed]
        losses = {c: loss_by_hand(tiny5.model, samples, [i for i in kept if i != c]) for c in kept[:-1]}
        ranked = sorted(losses, key=losses.get)
        assert len(ranked) == 1 or losses[ranked[1]] - losses[ranked[0]] > 1e-5  # no near tie: the choice is defined
        removed.append(ranked[0])
    assert order == removed
    context = Context(L, orders={"iterative-loss": order})
    assert choose_layers("iterative-loss", 2, context) == LayerSet(tuple(removed[:2]), L)


def test_iterative_angular_is_the_brute_force_greedy(tiny5, samples):
    """At each step the layer l (final excluded) with the smallest mean last-token d(x^l, x^(l+1)) on
    the model without the layers removed so far, all from the hand-written forward."""
    order = get_strategy("iterative-angular").removal_order(tiny5, samples, batch_size=2)
    removed: list[int] = []
    for _ in range(L - 1):
        kept = [i for i in range(L) if i not in removed]
        distance = [0.0] * (len(kept) - 1)
        for ids in samples:
            states = llama_by_hand(tiny5.model, ids, kept)[0][0::2]
            for p in range(len(kept) - 1):
                distance[p] += angle(states[p][-1], states[p + 1][-1]) / len(samples)
        removed.append(kept[min(range(len(distance)), key=distance.__getitem__)])
    assert order == removed


@pytest.mark.parametrize("kind", ["attention", "mlp"])
def test_sublayer_drop_takes_the_lowest_influence_by_hand(tiny5, samples, kind):
    cos, tokens = torch.zeros(2 * L, dtype=torch.float64), 0
    for ids in samples:
        states = llama_by_hand(tiny5.model, ids)[0]
        cos += torch.stack([cosine_sum(states[j], states[j + 1]) for j in range(2 * L)])
        tokens += len(ids)
    influence = (1 - cos / tokens).tolist()[0 if kind == "attention" else 1::2]
    context = Context(L, sublayers=compute_sublayer_scores(tiny5, samples, batch_size=2))
    for k in range(1, L):
        chosen = choose_layers(f"{kind}-drop", k, context)
        assert getattr(chosen, kind) == tuple(sorted(sorted(range(L), key=influence.__getitem__)[:k])) and chosen.n == 0


def test_context_is_computed_once_and_cached(tiny_llama, store):
    """strategy_context computes each need on the text and keeps it in the store: the iterative order
    is a 'selection' run with its seconds, fetched (not recomputed) the second time."""
    names = ["block-influence", "iterative-angular", "mlp-drop", "simple"]
    context = strategy_context(tiny_llama, names, "embedded", 3, 16, 2, store)
    assert len(context.influence) == 4 and context.sublayers.num_layers == 4
    order = context.orders["iterative-angular"]
    assert sorted(order) == [0, 1, 2]  # every layer but the final, once
    runs = {run.kind: run for run in store.list_runs()}
    assert {"metrics", "sublayers", "selection"} <= set(runs) and runs["selection"].result["seconds"] > 0
    again = strategy_context(tiny_llama, names, "embedded", 3, 16, 2, store)
    assert again.orders == context.orders and len(store.list_runs()) == len(runs)
    assert choose_layers("simple", 1, again) == Block(2, 1, 4)

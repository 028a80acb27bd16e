"""Pruned points that replay the unpruned model's layers below the block equal the full pruned
forward: held-out loss and every answer's log-likelihood, for each strategy's kind of block,
on families with per-layer attention types (gemma2/3 sliding windows), scaled embeddings (gemma)
and a plain llama."""

from __future__ import annotations

import pytest

from explorer.evaluation.evaluate import run_task, validation_loss
from explorer.lm.blocks import Block
from explorer.lm.layers import pruned_view
from explorer.lm.models import LoadedModel
from explorer.surgery.reuse import PrefixReuse
from tests.families import tiny_family_model

LAYERS = 6
# A block in the middle (what "similarity" picks), the simple strategy's [L-1-n, L-1), top-cut's [L-n, L).
BLOCKS = [Block(1, 2, LAYERS), Block(LAYERS - 3, 2, LAYERS), Block(LAYERS - 2, 2, LAYERS)]


def _loss_only(loaded: LoadedModel) -> dict:
    return {"loss": validation_loss(loaded, "embedded", samples=3, seq_len=40, batch_size=2)}


def _loss_and_quiz(loaded: LoadedModel) -> dict:
    """Held-out loss and a 3-shot cloze quiz (shared few-shot prefix, answers on its KV cache)."""
    report = run_task(loaded, "quiz-capitals", limit=5, batch_size=3)
    return {**_loss_only(loaded), "scores": [s for r in report.per_question for s in r.scores]}


def _assert_close(ours: dict, reference: dict) -> None:
    assert ours.keys() == reference.keys()
    assert ours["loss"] == pytest.approx(reference["loss"], abs=1e-5)
    assert ours.get("scores", []) == pytest.approx(reference.get("scores", []), abs=1e-5)


@pytest.mark.parametrize(
    ("family", "overrides", "evaluate"),
    [
        ("llama", {}, _loss_and_quiz),
        ("gemma2", {"sliding_window": 16}, _loss_only),  # 40-token samples cross the window
        ("gemma2", {}, _loss_and_quiz),
        ("gemma3_text", {"sliding_window": 16}, _loss_only),
        ("gemma3_text", {}, _loss_and_quiz),
    ],
)
def test_replayed_points_equal_the_full_pruned_forward(family, overrides, evaluate, embedded):
    model = tiny_family_model(family, len(embedded.tokenizer), num_hidden_layers=LAYERS, **overrides)
    loaded = LoadedModel(model, embedded.tokenizer, family, f"test:{family}")
    reuse = PrefixReuse(loaded, {b.start for b in BLOCKS}, evaluate)
    _assert_close(reuse.base, evaluate(loaded))
    for block in BLOCKS:
        _assert_close(reuse.measure(block), evaluate(pruned_view(loaded, block)))
    assert reuse.replayed == len(BLOCKS)  # no point fell back to the full forward


def test_linear_repair_replays_the_layers_below_its_fold(embedded):
    """A linear repair changes layer start - 1 only: the layers below it replay, and the point
    equals the repaired pruned model run whole."""
    from explorer.surgery.repair import RepairConfig, fit_block, fold_private

    model = tiny_family_model("llama", len(embedded.tokenizer), num_hidden_layers=LAYERS)
    loaded = LoadedModel(model, embedded.tokenizer, "llama", "test:llama-linear")
    block = BLOCKS[1]  # [3, 5): the map folds into layer 2, layers 0-1 replay
    fit = fit_block(loaded, block, RepairConfig(source="embedded", samples=8, seq_len=128, batch_size=4))

    def fold(view: LoadedModel) -> None:
        fold_private(view.model, fit.layer, fit.transform)

    whole = pruned_view(loaded, block)
    fold(whole)
    reuse = PrefixReuse(loaded, {block.start, fit.layer}, _loss_and_quiz)
    repaired = reuse.measure(block, prepare=fold, changed=fit.layer)
    _assert_close(repaired, _loss_and_quiz(whole))
    assert reuse.replayed == 1
    # the map did change the point, by more than the replay's tolerance (random weights: a small change)
    assert abs(repaired["loss"] - reuse.measure(block)["loss"]) > 1e-5

"""Agreement with the unpruned model beside every accuracy, and the held-out loss's standard error.

Each is checked against an independent computation from the two models' own per-question
answers (or per-document losses), on a real tiny llama and its pruned copies.
"""

from __future__ import annotations

import json
import math
import statistics

import pytest
import torch

from explorer.cli import main
from explorer.evaluation.agreement import agreement, predictions
from explorer.evaluation.evaluate import ratio_standard_error, run_task, validation_loss, validation_loss_with_error
from explorer.experiments.sweep import SweepSettings, describe_point, run_sweep, start_sweep
from explorer.kinds import headline
from explorer.lm.data import make_samples
from explorer.state.store import Run, Store
from explorer.surgery.heal import HealConfig, prune_and_heal
from explorer.surgery.prune import prune_block
from explorer.views.figures.sweep import points_frame

TASK, LIMIT = "quiz-capitals", 12


def same_answers(a, b) -> float:
    """Independent: pair the two reports' questions by id and count equal picks."""
    theirs = {r.id: r.pred for r in b.per_question}
    pairs = [(r.pred, theirs[r.id]) for r in a.per_question if r.id in theirs]
    return sum(x == y for x, y in pairs) / len(pairs)


@pytest.fixture(scope="module")
def reports(tiny_llama):
    unpruned = run_task(tiny_llama, TASK, LIMIT)
    pruned = run_task(prune_block(tiny_llama, 1, 2).loaded, TASK, LIMIT)
    return unpruned, pruned


def test_agreement_matches_an_independent_count(reports):
    unpruned, pruned = reports
    same = agreement(predictions(pruned.per_question), predictions(unpruned.per_question))
    assert same["agreement"] == pytest.approx(same_answers(pruned, unpruned))
    assert same["agreement_n"] == LIMIT and same["agreement_ci_low"] <= same["agreement"] <= same["agreement_ci_high"]
    assert agreement(predictions(unpruned.per_question), predictions(unpruned.per_question))["agreement"] == 1.0
    assert agreement(None, predictions(unpruned.per_question)) == {}  # runs stored before predictions were kept


def test_eval_of_a_pruned_folder_reports_agreement(tiny_llama, tiny_llama_dir, tmp_path, reports, capsys):
    folder, out = tmp_path / "pruned", tmp_path / "eval.json"
    assert main(["prune", "--model", str(tiny_llama_dir), "--start", "1", "--n", "2", "--device", "cpu",
                 "--out", str(folder)]) == 0
    assert main(["eval", "--model", str(folder), "--task", TASK, "--limit", str(LIMIT), "--device", "cpu",
                 "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["reference"] == str(tiny_llama_dir)  # read from the folder's run.json
    assert data["agreement"] == pytest.approx(same_answers(*reversed(reports)))
    assert "same answer as the unpruned model" in capsys.readouterr().out
    assert "same answer as the unpruned model" in headline(Run(1, "eval", None, "done", "m", {}, data, None, None, 0, 0))


def test_heal_events_carry_agreement(tiny_llama, tiny_llama_dir):
    from explorer.lm.models import load_model

    copy = load_model(str(tiny_llama_dir), device="cpu")
    config = HealConfig(steps=1, eval_every=1, batch_size=2, seq_len=16, eval_task=TASK, eval_limit=LIMIT, val_samples=2,
                        quantize=False)
    outcome = prune_and_heal(copy, 1, 2, config)
    before, after, healed = (outcome.metrics[k] for k in ("before_pruning", "after_pruning", "healed"))
    expected = sum(after["predictions"][q] == before["predictions"][q] for q in before["predictions"]) / LIMIT
    assert after["agreement"] == pytest.approx(expected)
    assert 0 <= healed["agreement"] <= 1 and "agreement" not in before


def test_sweep_points_carry_agreement_and_loss_error(tiny_llama, tmp_path):
    store = Store(tmp_path / "runs.sqlite")
    settings = SweepSettings(model="tiny", strategies=("simple",), fractions=(0.0, 0.5), limit=LIMIT, val_samples=5,
                             sim_samples=2, seq_len=24, batch_size=4, task=TASK)
    points = {p["n"]: p for p in run_sweep(tiny_llama, settings, store, start_sweep(store, settings))["points"]}
    unpruned, pruned = points[0], points[2]
    assert unpruned["agreement"] == 1.0
    expected = sum(pruned["predictions"][q] == unpruned["predictions"][q] for q in unpruned["predictions"]) / LIMIT
    assert pruned["agreement"] == pytest.approx(expected)
    assert "same answer as the unpruned model" in describe_point(pruned) and "±" in describe_point(pruned)
    assert points_frame(list(points.values())).agreement.tolist() == [1.0, pytest.approx(expected)]
    loss, se = validation_loss_with_error(tiny_llama, settings.text, 5, 24, 4)
    assert (pruned["val_loss_se"] > 0) and unpruned["val_loss_se"] == pytest.approx(se)


def test_loss_error_against_per_document_losses(tiny_llama):
    """Each document alone, unpadded, in float64: its summed NLL and its number of targets."""
    ids = make_samples(tiny_llama.tokenizer, "embedded", 6, 20, split="heldout").ids
    sums, counts = [], []
    for doc in ids:
        with torch.no_grad():
            logits = tiny_llama.model(input_ids=torch.tensor([doc])).logits[0, :-1].double()
        sums.append(float(torch.nn.functional.cross_entropy(logits, torch.tensor(doc[1:]), reduction="sum")))
        counts.append(len(doc) - 1)
    loss, se = validation_loss_with_error(tiny_llama, "embedded", 6, 20, 4)
    assert loss == pytest.approx(sum(sums) / sum(counts), rel=1e-5) == validation_loss(tiny_llama, "embedded", 6, 20, 4)
    ratio = sum(sums) / sum(counts)
    residual = [(s - ratio * c) / (sum(counts) / len(counts)) for s, c in zip(sums, counts)]
    assert se == pytest.approx(math.sqrt(sum(r * r for r in residual) / (len(ids) * (len(ids) - 1))), rel=1e-4)
    # Equal-length documents: the standard error of the per-document mean losses.
    assert ratio_standard_error([2.0, 4.0, 9.0], [2, 2, 2]) == pytest.approx(statistics.stdev([1, 2, 4.5]) / math.sqrt(3))
    assert ratio_standard_error([3.0], [2]) == 0.0

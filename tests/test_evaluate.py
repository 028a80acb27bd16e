"""Wilson intervals, task reports, validation loss and the `eval` CLI."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from explorer.cli import main
from explorer.core.errors import ExplorerError
from explorer.evaluation.accuracy import wilson_interval
from explorer.evaluation.evaluate import TaskReport, normalized_loss, run_task, validation_loss
from explorer.evaluation.questions import QuestionResult
from explorer.lm.data import make_samples

# Newcombe (1998), "Two-sided confidence intervals for the single proportion", Statistics in
# Medicine 17:857-872, Table I, method 3 (Wilson score interval without continuity correction).
NEWCOMBE = [((81, 263), (0.2553, 0.3662)), ((15, 148), (0.0624, 0.1605)), ((0, 20), (0.0, 0.1611)), ((1, 29), (0.0061, 0.1718))]


@pytest.mark.parametrize(("counts", "expected"), NEWCOMBE)
def test_wilson_interval_matches_published_values(counts, expected):
    low, high = wilson_interval(*counts)
    assert low == pytest.approx(expected[0], abs=6e-5)
    assert high == pytest.approx(expected[1], abs=6e-5)


@pytest.mark.parametrize("counts", [(0, 10), (5, 10), (81, 263), (300, 300)])
def test_wilson_interval_matches_scipy(counts):
    stats = pytest.importorskip("scipy.stats")
    z = stats.norm.ppf(0.975)
    reference = stats.binomtest(*counts).proportion_ci(confidence_level=0.95, method="wilson")
    assert wilson_interval(*counts, z=z) == pytest.approx((reference.low, reference.high), abs=1e-9)


def test_wilson_interval_rejects_impossible_counts():
    for counts in [(1, 0), (-1, 10), (11, 10)]:
        with pytest.raises(ExplorerError):
            wilson_interval(*counts)


def test_report_holds_both_metrics_and_the_json_contract():
    results = [
        QuestionResult("s/test/0", "A", "A", [-1.0, -2.0], {"acc": "B"}),
        QuestionResult("s/test/1", "B", "A", [-3.0, -2.0], {"acc": "A"}),
        QuestionResult("s/test/2", "C", "C", [-1.0, -2.0], {"acc": "C"}),
    ]
    report = TaskReport.from_results("mmlu-cloze", "MMLU cloze (test data)", 0.25, results, 1.5, "acc_norm")
    data = json.loads(json.dumps(report.to_json()))
    assert data["accuracy"] == pytest.approx(2 / 3)
    assert (data["ci_low"], data["ci_high"]) == pytest.approx(wilson_interval(2, 3))
    assert data["alt_metrics"]["acc"]["accuracy"] == pytest.approx(2 / 3)
    assert data["metric"] == "acc_norm" and data["n_questions"] == 3 and data["chance"] == 0.25
    assert [(q["id"], q["pred"], q["gold"]) for q in data["per_question"]] == [(r.id, r.pred, r.gold) for r in results]
    assert TaskReport.from_json(data) == report
    assert report.summary().startswith("accuracy 0.67 [0.21, 0.94] on 3 questions (chance 0.25) by acc_norm; acc 0.67")


def test_run_task_rejects_bad_input(embedded):
    with pytest.raises(ExplorerError, match="at least 1"):
        run_task(embedded, "mmlu", limit=0)
    with pytest.raises(ExplorerError, match="Unknown task"):
        run_task(embedded, "no-such-task")
    with pytest.raises(ExplorerError, match="does not take"):
        run_task(embedded, "mmlu", limit=1, no_such_option=3)


def test_validation_loss_matches_per_sample_computation(embedded):
    samples = make_samples(embedded.tokenizer, "embedded", 3, 170, split="heldout").ids
    assert len({len(ids) for ids in samples}) > 1, "samples of different lengths exercise the padding"
    total, count = 0.0, 0
    with torch.no_grad():
        for ids in samples:
            logits = embedded.model(torch.tensor([ids])).logits[0, :-1].float()
            total += torch.nn.functional.cross_entropy(logits, torch.tensor(ids[1:]), reduction="sum").item()
            count += len(ids) - 1
    assert validation_loss(embedded, "embedded", samples=3, seq_len=170, batch_size=3) == pytest.approx(total / count, rel=1e-4)


def test_normalized_loss_scale():
    vocab = 49152
    assert normalized_loss(2.5, 2.5, vocab) == 0.0
    assert normalized_loss(math.log(vocab), 2.5, vocab) == pytest.approx(1.0)
    assert normalized_loss(4.0, 2.5, vocab) == pytest.approx(1.5 / (math.log(vocab) - 2.5))
    with pytest.raises(ExplorerError):
        normalized_loss(12.0, 11.0, vocab)


def test_cli_eval_writes_the_json_contract(tmp_path, mmlu_dir):
    out = tmp_path / "eval.json"
    done = subprocess.run(
        [sys.executable, "-m", "explorer", "eval", "--model", "embedded", "--task", "mmlu", "--mmlu-dir", str(mmlu_dir),
         "--subjects", "high_school_geography,anatomy", "--shots", "0", "--limit", "4", "--batch-size", "4",
         "--out", str(out)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    assert done.returncode == 0, done.stderr
    data = json.loads(out.read_text())
    assert data["n_questions"] == 4 and data["task"] == "mmlu" and data["chance"] == 0.25
    assert {q["id"].split("/")[0] for q in data["per_question"]} == {"high_school_geography", "anatomy"}
    assert all(q["pred"] in "ABCD" and q["gold"] in "ABCD" for q in data["per_question"])
    correct = sum(q["pred"] == q["gold"] for q in data["per_question"])
    assert data["accuracy"] == correct / 4
    assert done.stdout.strip() == (
        f"accuracy {correct / 4:.2f} [{data['ci_low']:.2f}, {data['ci_high']:.2f}] on 4 questions (chance 0.25)"
    )


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--limit", "0"], "at least 1"),
        (["--subjects", "high_school_geografy"], "did you mean high_school_geography"),
        (["--subjects", ","], "matches no MMLU subject"),
        (["--task", "no-such-task"], "Unknown task"),
        (["--shots", "9"], "between 0 and 5"),
    ],
)
def test_cli_eval_bad_input_is_one_line(arguments, message, mmlu_dir, tmp_path, capsys):
    argv = ["eval", "--mmlu-dir", str(mmlu_dir), "--out", str(tmp_path / "x.json"), *arguments]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "x.json").exists()


def test_cli_eval_missing_folder(tmp_path, capsys):
    assert main(["eval", "--mmlu-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x.json")]) == 2
    assert "MMLU folder not found" in capsys.readouterr().err

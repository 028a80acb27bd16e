"""lm-eval on the in-memory model, offline from the configs we write, agrees with our scorers
question by question (same prompts, same log-likelihoods, same picks)."""

from __future__ import annotations

import json

import pytest

from explorer.core.errors import ExplorerError
from explorer.evaluation.evaluate import run_task
from explorer.evaluation.lmeval import run_lmeval
from explorer.evaluation.scoring import loglikelihoods
from explorer.evaluation.tasks import get_task
from explorer.evaluation.tasks.boolq import read_boolq, write_boolq_task
from explorer.evaluation.tasks.mmlu import read_csv, write_mmlu_tasks
from explorer.evaluation.tasks.quiz import QUIZZES, generate, write_quiz_task

LETTERS = "ABCD"
SUBJECT = "high_school_geography"


def _docs(folder, task):
    from lm_eval.tasks import TaskManager

    return list(TaskManager(include_path=str(folder), include_defaults=False).load(task)["tasks"][task].test_docs())


@pytest.mark.parametrize("shots", [0, 1])
def test_mmlu_letter_matches_lm_eval(embedded, mmlu_dir, tmp_path, shots):
    limit = 12 if shots == 0 else 4
    [name] = write_mmlu_tasks(mmlu_dir, [SUBJECT], folder=tmp_path)
    theirs = run_lmeval(embedded, [name], limit=limit, num_fewshot=shots, include_path=tmp_path)
    task = get_task("mmlu", mmlu_dir=mmlu_dir, subjects=[SUBJECT], shots=shots)
    ours = run_task(embedded, task, limit=limit).per_question
    samples, predictions = theirs["samples"][name], theirs["predictions"][name]
    assert len(predictions) == len(ours) == limit
    for sample, prediction, result, question in zip(samples, predictions, ours, task.questions):
        assert sample["arguments"][0][0] == task.prompt(question)  # the very same prompt
        assert LETTERS[prediction["gold"]] == result.gold
        assert LETTERS[prediction["pred"]] == result.pred
        assert prediction["loglikelihoods"] == pytest.approx(result.scores, abs=1e-3)


def test_local_mmlu_csv_without_header_and_letter_answers(mmlu_dir, tmp_path):
    """The original Hendrycks files have no header and letter answers; lm-eval must read the same rows."""
    source = read_csv(mmlu_dir / "test" / f"{SUBJECT}_test.csv", SUBJECT, "test")[:6]
    folder = tmp_path / "hendrycks"
    (folder / "test").mkdir(parents=True)
    lines = [[q.question, *q.choices, LETTERS[q.answer]] for q in source]
    import csv

    with open(folder / "test" / f"{SUBJECT}_test.csv", "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(lines)
    [name] = write_mmlu_tasks(folder, [SUBJECT], folder=tmp_path / "tasks")
    docs = _docs(tmp_path / "tasks", name)
    assert [d["question"] for d in docs] == [q.question for q in source]
    assert [[d[f"choice{i}"] for i in range(4)] for d in docs] == [list(q.choices) for q in source]
    assert [d["answer"] for d in docs] == [LETTERS[q.answer] for q in source]


@pytest.mark.parametrize(("quiz", "shots", "limit"), [("quiz-capitals", 0, 20), ("quiz-cities", None, 6)])
def test_quiz_matches_lm_eval(embedded, tmp_path, quiz, shots, limit):
    """None: the quiz's default few-shot setting on both sides."""
    name = write_quiz_task(quiz, shots=shots, folder=tmp_path)
    theirs = run_lmeval(embedded, [name], limit=limit, include_path=tmp_path)
    task = get_task(quiz) if shots is None else get_task(quiz, shots=shots)
    ours = run_task(embedded, task, limit=limit).per_question
    samples, predictions = theirs["samples"][name], theirs["predictions"][name]
    assert len(predictions) == len(ours) == limit
    prefix = "".join(f"{q.demonstration()}\n\n" for q in task.demonstrations)
    for sample, prediction, result, question in zip(samples, predictions, ours, task.questions):
        assert sample["arguments"][0][0] == prefix + question.prompt
        assert LETTERS[prediction["gold"]] == result.gold
        assert LETTERS[prediction["pred_norm"]] == result.pred  # acc_norm, the quiz's metric
        assert LETTERS[prediction["pred"]] == result.alt_preds["acc"]
        assert prediction["loglikelihoods"] == pytest.approx(result.scores, abs=1e-3)
    assert theirs["results"][name]["acc_norm,none"] == pytest.approx(sum(r.correct for r in ours) / limit)


def _boolq_file(path, count: int = 6):
    """BoolQ-format rows built from package facts: half state the true capital, half a distractor."""
    rows = []
    for i, q in enumerate(generate(QUIZZES["quiz-capitals"])[:count]):
        country = q.question.removeprefix("What is the capital of ").removesuffix("?")
        city = q.choices[q.answer] if i % 2 == 0 else q.choices[(q.answer + 1) % 4]
        rows.append({"question": f"is {city} the capital of {country}", "passage": f"{country} is a country.", "answer": i % 2 == 0})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def test_boolq_from_local_file(embedded, tmp_path):
    path = tmp_path / "boolq.jsonl"
    rows = _boolq_file(path)
    results = get_task("boolq", boolq_file=path).score(embedded, batch_size=4)
    assert [r.gold for r in results] == ["yes" if r["answer"] else "no" for r in rows]
    prompts = [f"{r['passage']}\nQuestion: {r['question']}?\nAnswer:" for r in rows]
    ours = loglikelihoods(embedded, [(p, c) for p in prompts for c in (" no", " yes")])
    for i, result in enumerate(results):
        no, yes = ours[2 * i][0], ours[2 * i + 1][0]
        assert result.scores == pytest.approx([no, yes], abs=1e-3)
        assert result.pred == ("yes" if yes > no else "no")


def test_bad_boolq_files(tmp_path):
    with pytest.raises(ExplorerError, match="not found"):
        get_task("boolq", boolq_file=tmp_path / "absent.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "passage": "p", "answer": true}\n{"question": "q"}\n')
    with pytest.raises(ExplorerError, match="line 2: each line needs"):
        read_boolq(bad)
    bad.write_text('{"question": "q", "passage": "p", "answer": "maybe"}\n')
    with pytest.raises(ExplorerError, match="line 1: answer 'maybe'"):
        write_boolq_task(bad, folder=tmp_path)
    bad.write_text("not json\n")
    with pytest.raises(ExplorerError, match="line 1 is not valid JSON"):
        read_boolq(bad)


def test_bad_lmeval_inputs(embedded, mmlu_dir, tmp_path):
    with pytest.raises(ExplorerError, match="at least 1"):
        run_lmeval(embedded, ["explorer_quiz_capitals"], limit=0)
    with pytest.raises(ExplorerError, match="No lm-eval task"):
        run_lmeval(embedded, [])
    with pytest.raises(ExplorerError, match="Unknown MMLU subject"):
        write_mmlu_tasks(mmlu_dir, ["astrology"], folder=tmp_path)
    with pytest.raises(ExplorerError, match="MMLU folder not found"):
        write_mmlu_tasks(tmp_path / "nowhere", folder=tmp_path)
    with pytest.raises(ExplorerError, match="Unknown quiz"):
        write_quiz_task("quiz-nope", folder=tmp_path)

"""MMLU letter and cloze tasks on the real CSVs in ../shared/data/mmlu.

Prompts are checked against lm-eval's own templates (rendered from its task YAML with Jinja),
scores against one unbatched forward per question, the CSV loader against temp files that
re-encode real rows (with/without header, letter/index answers)."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import jinja2
import pytest
import torch
import yaml

from explorer.cli import main
from explorer.core.errors import ExplorerError
from explorer.evaluation.evaluate import run_task
from explorer.evaluation.tasks import get_task
from explorer.evaluation.tasks.mmlu import read_csv

SUBJECTS = ["high_school_geography", "anatomy"]
LM_EVAL_MMLU = Path(importlib.util.find_spec("lm_eval").origin).parent / "tasks" / "mmlu"


def _real_rows(mmlu_dir: Path, subject: str, split: str) -> list[dict]:
    with open(mmlu_dir / split / f"{subject}_{split}.csv", encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def _doc(row: dict) -> dict:
    """A row as lm-eval's cais/mmlu document."""
    return {"question": row["question"], "choices": [row[f"choice{i}"] for i in range(4)], "answer": int(row["answer"])}


def _lm_eval_prompt(variant: str, template_file: str, subject: str, doc: dict, shots: list[dict], target) -> str:
    """lm-eval's plain-text context: description, then each shot as text + " " + target + "\\n\\n", then the text."""
    template = yaml.safe_load((LM_EVAL_MMLU / variant / template_file).read_text())
    description = yaml.safe_load((LM_EVAL_MMLU / variant / f"mmlu_{subject}.yaml").read_text())["description"]
    render = jinja2.Template(template["doc_to_text"]).render
    return description + "".join(f"{render(**s)} {target(s)}\n\n" for s in shots) + render(**doc)


def _question_rows(mmlu_dir, questions) -> list[tuple[str, dict]]:
    rows = []
    for q in questions:
        subject, split, index = q.id.split("/")
        rows.append((subject, _doc(_real_rows(mmlu_dir, subject, split)[int(index)])))
    return rows


def test_letter_scorer_matches_lm_eval_prompt_and_unbatched_scores(embedded, mmlu_dir):
    task = get_task("mmlu", mmlu_dir=mmlu_dir, subjects=SUBJECTS)
    results = task.score(embedded, limit=5, batch_size=3)
    letters = [embedded.tokenizer.encode(f" {x}", add_special_tokens=False)[0] for x in "ABCD"]
    for result, (q, (subject, doc)) in zip(results, zip(task.questions, _question_rows(mmlu_dir, task.questions[:5]))):
        prompt = _lm_eval_prompt("default", "_default_template_yaml", subject, doc, [], None)
        assert task.prompt(q) == prompt
        with torch.no_grad():
            logits = embedded.model(torch.tensor([embedded.tokenizer.encode(prompt)])).logits[0, -1].float()
        reference = torch.log_softmax(logits, dim=-1)[letters]
        assert torch.allclose(torch.tensor(result.scores), reference, atol=1e-3)
        assert result.pred == "ABCD"[int(reference.argmax())]
        assert result.gold == "ABCD"[doc["answer"]]
    assert [r.id.split("/")[0] for r in results] == ["anatomy", "high_school_geography"] * 2 + ["anatomy"]


def test_few_shot_prompts_match_lm_eval(mmlu_dir):
    """k-shot prompts prepend the first k dev questions, solved, in lm-eval's format."""
    letter = get_task("mmlu", mmlu_dir=mmlu_dir, subjects=SUBJECTS, shots=3)
    cloze = get_task("mmlu-cloze", mmlu_dir=mmlu_dir, subjects=SUBJECTS, shots=3)
    for q, (subject, doc) in zip(letter.questions, _question_rows(mmlu_dir, letter.questions[:4])):
        shots = [_doc(row) for row in _real_rows(mmlu_dir, subject, "dev")[:3]]
        expected = _lm_eval_prompt("default", "_default_template_yaml", subject, doc, shots, lambda s: "ABCD"[s["answer"]])
        assert letter.prompt(q) == expected
        expected = _lm_eval_prompt(
            "continuation", "_continuation_template_yaml", subject, doc, shots, lambda s: s["choices"][s["answer"]]
        )
        assert cloze.context(q) == expected


def test_cloze_scorer_matches_lm_eval_prompt_and_unbatched_scores(embedded, mmlu_dir):
    report = run_task(embedded, "mmlu-cloze", limit=2, batch_size=8, mmlu_dir=mmlu_dir, subjects=SUBJECTS)
    task = get_task("mmlu-cloze", mmlu_dir=mmlu_dir, subjects=SUBJECTS)
    tokenizer = embedded.tokenizer
    results = report.per_question
    for result, (q, (subject, doc)) in zip(results, zip(task.questions, _question_rows(mmlu_dir, task.questions[:2]))):
        context = _lm_eval_prompt("continuation", "_continuation_template_yaml", subject, doc, [], None)
        assert task.context(q) == context
        logprobs = []
        for choice in doc["choices"]:
            ctx, whole = tokenizer.encode(context), tokenizer.encode(f"{context} {choice}")
            with torch.no_grad():
                lp = torch.log_softmax(embedded.model(torch.tensor([whole])).logits[0].float(), dim=-1)
            logprobs.append(sum(lp[t - 1, whole[t]].item() for t in range(len(ctx), len(whole))))
        assert result.scores == pytest.approx(logprobs, abs=1e-3)
        per_char = [lp / len(c) for lp, c in zip(logprobs, doc["choices"])]
        assert result.pred == "ABCD"[per_char.index(max(per_char))]
        assert result.alt_preds == {"acc": "ABCD"[logprobs.index(max(logprobs))]}
    data = report.to_json()
    assert data["metric"] == "acc_norm" and set(data["alt_metrics"]) == {"acc"}
    raw = sum(r.alt_preds["acc"] == r.gold for r in results) / 2
    assert data["alt_metrics"]["acc"]["accuracy"] == raw
    assert data["accuracy"] == sum(r.pred == r.gold for r in results) / 2


def _write(path: Path, rows: list[list[str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as handle:
        csv.writer(handle).writerows(rows)
    return path


@pytest.fixture()
def real_rows(mmlu_dir) -> list[list[str]]:
    """The first six rows of the real anatomy test file, header first."""
    with open(mmlu_dir / "test" / "anatomy_test.csv", encoding="utf-8", newline="") as handle:
        return list(csv.reader(handle))[:6]


def test_csv_loader_accepts_header_or_not_and_letter_or_index(tmp_path, real_rows):
    header, data = real_rows[0], real_rows[1:]
    as_letters = [[*row[:5], "ABCD"[int(row[5])]] for row in data]
    variants = {
        "header_index": [header, *data],
        "plain_index": data,
        "plain_letter": as_letters,
        "header_letter": [header, *as_letters],
    }
    parsed = {name: read_csv(_write(tmp_path / f"{name}.csv", rows), "anatomy", "test") for name, rows in variants.items()}
    reference = parsed["header_index"]
    assert [q.answer for q in reference] == [int(row[5]) for row in data]
    assert [q.choices for q in reference] == [tuple(row[1:5]) for row in data]
    assert all(questions == reference for questions in parsed.values())


def test_malformed_csv_names_file_and_line(tmp_path, real_rows):
    short = [*real_rows[:3], real_rows[3][:5], *real_rows[4:]]
    with pytest.raises(ExplorerError, match=r"short\.csv line 4: expected 6 fields"):
        read_csv(_write(tmp_path / "short.csv", short), "anatomy", "test")
    bad_answer = [*real_rows[:2], [*real_rows[2][:5], "E"], *real_rows[3:]]
    with pytest.raises(ExplorerError, match=r"bad\.csv line 3: answer 'E'"):
        read_csv(_write(tmp_path / "bad.csv", bad_answer), "anatomy", "test")


def test_cli_reports_malformed_csv(tmp_path, real_rows, capsys):
    folder = tmp_path / "mmlu"
    _write(folder / "test" / "anatomy_test.csv", [*real_rows[:3], real_rows[3][:4]])
    assert main(["eval", "--mmlu-dir", str(folder), "--out", str(tmp_path / "x.json")]) == 2
    assert "anatomy_test.csv line 4" in capsys.readouterr().err


def test_questions_are_round_robin_deterministic_and_capped(mmlu_dir):
    subjects = ["anatomy", "virology", "high_school_geography"]
    task = get_task("mmlu", mmlu_dir=mmlu_dir, subjects=subjects)
    again = get_task("mmlu", mmlu_dir=mmlu_dir, subjects=list(reversed(subjects)))
    assert [q.id for q in task.questions] == [q.id for q in again.questions]
    first = [q.id for q in task.selected(6)]
    assert first == [f"{s}/test/{i}" for i in range(2) for s in sorted(subjects)]
    sizes = {s: len(_real_rows(mmlu_dir, s, "test")) for s in subjects}
    assert len(task.questions) == sum(sizes.values())
    assert "3 subjects" in task.source and str(mmlu_dir) in task.source


def test_all_subjects_by_default(mmlu_dir):
    task = get_task("mmlu-cloze", mmlu_dir=mmlu_dir)
    assert len(task.subjects) == 57 and "57 subjects" in task.source


def test_bad_options(mmlu_dir, tmp_path):
    with pytest.raises(ExplorerError, match="did you mean high_school_geography"):
        get_task("mmlu", mmlu_dir=mmlu_dir, subjects=["high_school_geografy"])
    with pytest.raises(ExplorerError, match="matches no MMLU subject"):
        get_task("mmlu", mmlu_dir=mmlu_dir, subjects=[])
    with pytest.raises(ExplorerError, match="not found"):
        get_task("mmlu", mmlu_dir=tmp_path / "missing")
    with pytest.raises(ExplorerError, match="dev split"):
        get_task("mmlu", mmlu_dir=mmlu_dir, subjects=["anatomy"], split="dev", shots=1)
    with pytest.raises(ExplorerError, match="Unknown MMLU split"):
        get_task("mmlu", mmlu_dir=mmlu_dir, split="train")

"""Generation tasks (quizzes answered in words, arithmetic, GSM8K, MMLU's letter generated): their
questions, prompts and gold answers, and their scores read from what the model wrote."""

from __future__ import annotations

import json
import re

import pytest

from explorer.core.errors import ExplorerError
from explorer.evaluation.answers import extract_letter, extract_number, normalize
from explorer.evaluation.evaluate import TaskReport, run_task
from explorer.evaluation.tasks import generation_task_names, get_task, is_generative, task_names
from explorer.evaluation.tasks.arith import problems
from explorer.evaluation.tasks.gsm8k import read_gsm8k
from explorer.evaluation.tasks.quiz import QUIZZES, load_facts
from explorer.lm.generate import Decoding, generate

SUBJECT = "high_school_geography"


def test_registry_knows_which_tasks_generate():
    names = generation_task_names()
    assert {"arith", "arith-cot", "gsm8k", "mmlu-gen"} <= set(names)
    assert {f"{quiz}-gen" for quiz in QUIZZES} <= set(names)
    assert set(names) <= set(task_names())
    assert is_generative("quiz-capitals-gen") and not is_generative("quiz-capitals") and not is_generative("mmlu")


@pytest.mark.parametrize("quiz", sorted(QUIZZES))
def test_quiz_by_generation_asks_the_cloze_questions(embedded, quiz):
    """Same questions, demonstrations and prompt as the cloze quiz; the gold answer is the gold
    choice's text, and the token budget holds the longest gold answer with room to spare."""
    cloze, generative = get_task(quiz), get_task(f"{quiz}-gen")
    prefix = "".join(f"{q.demonstration()}\n\n" for q in cloze.demonstrations)
    assert [p.id for p in generative.prompted] == [q.id for q in cloze.questions]
    assert [p.prompt for p in generative.prompted] == [prefix + q.prompt for q in cloze.questions]
    assert [p.gold for p in generative.prompted] == [q.choices[q.answer] for q in cloze.questions]
    longest = max(len(embedded.tokenizer(" " + answer)["input_ids"]) for _, answer in load_facts(QUIZZES[quiz]))
    assert longest <= 7 < generative.decoding.max_new_tokens


def test_quiz_generation_scores_what_the_model_wrote(embedded):
    """Each result keeps the model's text; its prediction is that line normalized, scored against the
    normalized gold; the report, its JSON and its reload carry the outputs."""
    task = get_task("quiz-capitals-gen")
    report = run_task(embedded, task, limit=8, batch_size=4)
    texts = generate(embedded, [q.prompt for q in task.selected(8)], Decoding(max_new_tokens=16, until=("\n",)), 3)
    for result, question, text in zip(report.per_question, task.selected(8), texts):
        assert result.output == text.text
        assert result.pred == normalize(text.text) and result.gold == normalize(question.gold)
    assert report.accuracy == sum(r.pred == r.gold for r in report.per_question) / 8
    assert report.metric == "exact_match" and report.chance == 0
    assert 0 < report.accuracy < 1  # the embedded model knows some capitals, not all
    again = TaskReport.from_json(json.loads(json.dumps(report.to_json())))
    assert [r.output for r in again.per_question] == [r.output for r in report.per_question]


def _solve(question: str) -> int:
    """The answer computed from the question's own numbers and words, independently of the generator."""
    numbers = [int(n) for n in re.findall(r"\d+", question)]
    if "boxes" in question:
        return numbers[0] * numbers[1]
    if "then gives" in question:
        return numbers[0] + numbers[1] - numbers[2]
    if "left?" in question:
        return numbers[0] - numbers[1]
    return numbers[0] + numbers[1]


@pytest.mark.parametrize("name", ["arith", "arith-cot"])
def test_arithmetic_problems(name):
    task = get_task(name)
    made = problems(0, 40)
    assert made == problems(0, 40) and made != problems(1, 40)  # seeded: the same on every machine
    for problem, prompted in zip(made, task.selected(40)):
        assert problem.answer == _solve(problem.question) >= 0
        assert extract_number(prompted.gold) == str(problem.answer)
        assert prompted.prompt.endswith(f"Question: {problem.question}\nAnswer:")
    demonstrations = task.prompted[0].prompt.split("\n\n")[:-1]
    assert len(demonstrations) == 4 and all(re.search(r"#### \d+$", d) for d in demonstrations)
    assert ("=" in task.prompted[0].prompt) == (name == "arith-cot")  # the working is shown with a chain of thought
    assert get_task(name, seed=1).prompted[0].prompt != task.prompted[0].prompt
    with pytest.raises(ExplorerError, match="shots"):
        get_task(name, shots=-1)


def _gsm8k_file(path, count: int = 6) -> list[dict]:
    """A GSM8K-format JSONL built from arithmetic problems (the working, then '#### N')."""
    rows = [{"question": p.question, "answer": p.solution(cot=True)} for p in problems(7, count)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return rows


def test_gsm8k_from_a_local_jsonl(embedded, tmp_path):
    path = tmp_path / "gsm8k.jsonl"
    rows = _gsm8k_file(path)
    task = get_task("gsm8k", gsm8k_file=str(path), shots=2)
    assert len(task.prompted) == 4 and "4 questions, 2-shot" in task.source
    header = "".join(f"Question: {r['question']}\nAnswer: {r['answer']}\n\n" for r in rows[:2])
    assert [p.prompt for p in task.prompted] == [f"{header}Question: {r['question']}\nAnswer:" for r in rows[2:]]
    assert task.decoding.until == ("Question:", "</s>", "<|im_end|>") and task.decoding.max_new_tokens == 256
    results = task.score(embedded, limit=2, batch_size=2)
    assert [r.gold for r in results] == [extract_number(r["answer"]) for r in rows[2:4]]
    assert all(r.output is not None and r.pred == extract_number(r.output) for r in results)


def test_bad_gsm8k_input(tmp_path):
    with pytest.raises(ExplorerError, match="not found"):
        get_task("gsm8k", gsm8k_file=str(tmp_path / "absent.jsonl"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": "1 + 1 = 2\\n#### 2"}\n{"question": "q", "answer": "two"}\n')
    with pytest.raises(ExplorerError, match="line 2: the answer has no final line"):
        read_gsm8k(bad)
    bad.write_text('{"question": "q"}\n')
    with pytest.raises(ExplorerError, match="line 1: each line needs"):
        read_gsm8k(bad)
    _gsm8k_file(bad, 3)
    with pytest.raises(ExplorerError, match="holds 3 problems"):
        get_task("gsm8k", gsm8k_file=str(bad), shots=3)


def test_gsm8k_from_the_hub_fails_fast_offline():
    """Offline (as here) the hub task names the local alternative; online it loads the test split."""
    try:
        task = get_task("gsm8k", shots=0)
    except ExplorerError as exc:
        assert "gsm8k_file" in str(exc)
    else:
        assert len(task.prompted) == 1319


def test_mmlu_by_generation(embedded, mmlu_dir):
    """The letter task's prompts; the gold is the answer letter; the prediction the letter written."""
    options = {"mmlu_dir": mmlu_dir, "subjects": [SUBJECT], "shots": 1}
    letter, generative = get_task("mmlu", **options), get_task("mmlu-gen", **options)
    assert [p.prompt for p in generative.selected(5)] == [letter.prompt(q) for q in letter.selected(5)]
    assert [p.gold for p in generative.selected(5)] == ["ABCD"[q.answer] for q in letter.selected(5)]
    report = run_task(embedded, generative, limit=4)
    assert report.chance == 0.25 and report.metric == "exact_match"
    assert all(r.pred == extract_letter(r.output) and r.gold in "ABCD" for r in report.per_question)

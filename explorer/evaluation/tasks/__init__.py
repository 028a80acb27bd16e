"""Task registry: every evaluation (MMLU letter, MMLU cloze, knowledge quiz, ...) has one interface,
so the healing live plot, the sweep and the CLI take any of them by name.

A task module calls `register(name, factory)`; `get_task(name, **options)` builds one. Tasks
scored by generating an answer (the quizzes answered in words, arithmetic, GSM8K, MMLU's letter
generated: tasks/generative.py) register with `generative=True` and have the same interface:
their `QuestionResult`s also keep the generated text.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import types
import typing
from typing import Callable, Protocol

from explorer.core.errors import ExplorerError
from explorer.evaluation.questions import QuestionResult
from explorer.lm.models import LoadedModel


class Task(Protocol):
    name: str
    source: str  # where the questions come from, with package versions: shown in the UI and results
    chance: float  # accuracy of random guessing

    def score(self, loaded: LoadedModel, limit: int | None = None, batch_size: int = 8) -> list[QuestionResult]: ...


_REGISTRY: dict[str, Callable[..., Task]] = {}
_GENERATIVE: set[str] = set()


def register(name: str, factory: Callable[..., Task], generative: bool = False) -> None:
    _REGISTRY[name] = factory
    if generative:
        _GENERATIVE.add(name)


def task_names() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def generation_task_names() -> list[str]:
    """The tasks scored by generating an answer (the rest score choices by log-likelihood)."""
    _load_builtin()
    return sorted(_GENERATIVE)


def is_generative(name: str) -> bool:
    _load_builtin()
    return name in _GENERATIVE


def default_eval_task() -> str:
    """The task with the strongest signal on small models, the default of healing and the sweep:
    a knowledge quiz when one is registered (a 135M model is at chance on MMLU), else MMLU cloze."""
    quizzes = [name for name in task_names() if name.startswith("quiz-")]
    return "quiz-capitals" if "quiz-capitals" in quizzes else (quizzes[0] if quizzes else "mmlu-cloze")


def get_task(name: str, **options) -> Task:
    _load_builtin()
    if name not in _REGISTRY:
        raise ExplorerError(f"Unknown task '{name}': choose one of {', '.join(sorted(_REGISTRY))}.")
    factory = _REGISTRY[name]
    signature = inspect.signature(factory, eval_str=True)
    try:
        signature.bind(**options)
    except TypeError as exc:  # an option this task does not take, e.g. mmlu_dir for a quiz
        raise ExplorerError(f"Task '{name}' does not take these options ({', '.join(options)}): {exc}.") from exc
    return factory(**{key: _typed(name, key, signature.parameters[key].annotation, value) if key in signature.parameters
                      else value for key, value in options.items()})  # **options passed on are typed where they land


NUMBERS = {int: "a whole number", float: "a number"}


def _typed(task: str, option: str, annotation, value):
    """A number option given as text (`--option shots=abc`) checked against the task's own type
    hint: converted when it is a number, refused in one sentence when not (instead of failing
    deep inside the task with a TypeError)."""
    allowed = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    number = next((kind for kind in (int, float) if kind in allowed), None)
    if number is None or not isinstance(value, str):
        return value
    try:
        return number(value)
    except ValueError as exc:
        raise ExplorerError(f"Task '{task}' option {option} takes {NUMBERS[number]}, not '{value}'.") from exc


def fitting_options(name: str, options: dict) -> dict:
    """The options that task `name` takes, of `options`: one set of task options serves a likelihood
    task and a generation task side by side (mmlu's mmlu_dir also reaches mmlu-gen; a quiz's seed
    does not reach mmlu-gen)."""
    _load_builtin()
    if name not in _REGISTRY:
        raise ExplorerError(f"Unknown task '{name}': choose one of {', '.join(sorted(_REGISTRY))}.")
    parameters = inspect.signature(_REGISTRY[name]).parameters
    return {key: value for key, value in options.items() if key in parameters}


def _load_builtin() -> None:
    """Task modules register themselves on import; imported lazily to keep start-up fast."""
    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")

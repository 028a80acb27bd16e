"""Task registry: every evaluation (MMLU letter, MMLU cloze, knowledge quiz, ...) has one interface,
so the healing live plot, the sweep and the CLI take any of them by name.

A task module calls `register(name, factory)`; `get_task(name, **options)` builds one.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Callable, Protocol, TypeVar

from explorer.core.errors import ExplorerError
from explorer.lm.models import LoadedModel


@dataclass
class QuestionResult:
    """One scored question: `pred` and `gold` are choice labels ("A".."D" or the label word).

    `alt_preds` holds the picks of a task's secondary metrics by name, e.g. {"acc": "B"} for a
    cloze task whose `pred` is the length-normalized pick (acc_norm), so reports show both."""

    id: str
    pred: str
    gold: str
    scores: list[float] = field(default_factory=list)
    alt_preds: dict[str, str] = field(default_factory=dict)

    @property
    def correct(self) -> bool:
        return self.pred == self.gold


T = TypeVar("T")


def check_limit(limit: int | None) -> None:
    """Reject a question cap below 1 before any model loads (None means every question)."""
    if limit is not None and limit < 1:
        raise ExplorerError(f"The question limit must be at least 1 (got {limit}); leave it out to use every question.")


def limited(items: list[T], limit: int | None) -> list[T]:
    """The first `limit` questions a task scores (all of them for None)."""
    check_limit(limit)
    return items[:limit]


def interleave(groups: list[list[T]]) -> list[T]:
    """One item of each group in turn (round robin), each group's own order kept: so the first N
    questions of any limit cover every subject, or every label, evenly."""
    return [group[i] for i in range(max(map(len, groups), default=0)) for group in groups if i < len(group)]


class Task(Protocol):
    name: str
    source: str  # where the questions come from, with package versions: shown in the UI and results
    chance: float  # accuracy of random guessing

    def score(self, loaded: LoadedModel, limit: int | None = None, batch_size: int = 8) -> list[QuestionResult]: ...


_REGISTRY: dict[str, Callable[..., Task]] = {}


def register(name: str, factory: Callable[..., Task]) -> None:
    _REGISTRY[name] = factory


def task_names() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


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
    try:
        inspect.signature(factory).bind(**options)
    except TypeError as exc:  # an option this task does not take, e.g. mmlu_dir for a quiz
        raise ExplorerError(f"Task '{name}' does not take these options ({', '.join(options)}): {exc}.") from exc
    return factory(**options)


def _load_builtin() -> None:
    """Task modules register themselves on import; imported lazily to keep start-up fast."""
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")

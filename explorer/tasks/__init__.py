"""Task registry: every evaluation (MMLU letter, MMLU cloze, knowledge quiz, ...) has one interface,
so the healing live plot, the sweep and the CLI take any of them by name.

A task module calls `register(name, factory)`; `get_task(name, **options)` builds one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol

from explorer.errors import ExplorerError
from explorer.models import LoadedModel


@dataclass
class QuestionResult:
    """One scored question: `pred` and `gold` are choice labels ("A".."D" or the label word)."""

    id: str
    pred: str
    gold: str
    scores: list[float] = field(default_factory=list)

    @property
    def correct(self) -> bool:
        return self.pred == self.gold


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


def get_task(name: str, **options) -> Task:
    _load_builtin()
    if name not in _REGISTRY:
        raise ExplorerError(f"Unknown task '{name}': choose one of {', '.join(sorted(_REGISTRY))}.")
    return _REGISTRY[name](**options)


def _load_builtin() -> None:
    """Task modules register themselves on import; imported lazily to keep start-up fast."""
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")

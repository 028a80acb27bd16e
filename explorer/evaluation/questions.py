"""What every task produces and how question lists are cut: the shapes shared by the task
registry, the scorers and lm-eval's wrapper, kept below all of them so none imports another."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeVar

from explorer.core.errors import ExplorerError


@dataclass
class QuestionResult:
    """One scored question: `pred` and `gold` are choice labels ("A".."D" or the label word).

    `alt_preds` holds the picks of a task's secondary metrics by name, e.g. {"acc": "B"} for a
    cloze task whose `pred` is the length-normalized pick (acc_norm), so reports show both.
    A generation task keeps what the model wrote in `output`; its `pred` and `gold` are the answer
    extracted from it and the gold answer, both normalized (explorer.evaluation.answers)."""

    id: str
    pred: str
    gold: str
    scores: list[float] = field(default_factory=list)
    alt_preds: dict[str, str] = field(default_factory=dict)
    output: str | None = None  # the generated text (generation tasks only)

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

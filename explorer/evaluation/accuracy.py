"""An accuracy and its 95% Wilson interval: the one way every score and agreement in the app
states its uncertainty, kept apart so the task scorers and the agreement check share it."""

from __future__ import annotations

import math
from dataclasses import dataclass

from explorer.core.errors import ExplorerError


def wilson_interval(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95% for z = 1.96).

    Unlike the normal approximation p +- z*sqrt(p(1-p)/n) it stays inside [0, 1] and is not
    empty at 0/n or n/n, which matters for the few hundred questions a live evaluation uses."""
    if n < 1:
        raise ExplorerError("An accuracy interval needs at least one question.")
    if not 0 <= correct <= n:
        raise ExplorerError(f"Correct answers ({correct}) must be between 0 and the number of questions ({n}).")
    p = correct / n
    denominator = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, center - half), min(1.0, center + half)


@dataclass
class Accuracy:
    """An accuracy with its 95% Wilson interval."""

    accuracy: float
    ci_low: float
    ci_high: float

    @classmethod
    def of(cls, correct: int, n: int) -> "Accuracy":
        return cls(correct / n, *wilson_interval(correct, n))


def question_count(measured: dict) -> int | None:
    """How many questions an accuracy dict was measured on: its n_questions, else the number of its
    per-question predictions (results stored before n was kept), else None."""
    if isinstance(measured.get("n_questions"), int):
        return measured["n_questions"]
    answers = measured.get("predictions")
    return len(answers) if isinstance(answers, (dict, list)) and answers else None


def generation_part(measured: dict) -> dict:
    """An evaluation's generation-task fields ("gen_accuracy", "gen_predictions", ...) under the
    likelihood task's names, so one accuracy text (with its n) serves both scorings."""
    return {key[len("gen_"):]: value for key, value in measured.items() if key.startswith("gen_")}


def with_n(text: str, measured: dict) -> str:
    """An accuracy's text followed by its number of questions, e.g. '84% [74%, 91%], n = 64'."""
    n = question_count(measured)
    return f"{text}, n = {n}" if n is not None else text

"""How often a pruned or healed model gives the same answer as the unpruned one.

Accuracy alone hides what pruning changed: a model at 60% may answer the same 60% as before
or a different 60%. Agreement is the fraction of questions (matched by id) where the two
models pick the same choice, right or wrong, with its 95% Wilson interval. The unpruned
model's answers come from the same task and settings and are cached in the store
(explorer.state.cache.cached_reference), so every eval, heal and sweep point compares against one set.
"""

from __future__ import annotations

from explorer.evaluation.accuracy import Accuracy
from explorer.evaluation.questions import QuestionResult


def predictions(results: list[QuestionResult]) -> dict[str, str]:
    """{question id: the model's pick}: what is kept beside an accuracy to compare later."""
    return {r.id: r.pred for r in results}


def agreement(preds: dict[str, str] | None, reference: dict[str, str] | None) -> dict:
    """{"agreement", "agreement_ci_low", "agreement_ci_high", "agreement_n"} over the questions both
    answered; empty when either side has no predictions (runs stored before they were kept)."""
    if not preds or not reference:
        return {}
    common = [q for q in preds if q in reference]
    if not common:
        return {}
    same = Accuracy.of(sum(preds[q] == reference[q] for q in common), len(common))
    return {"agreement": same.accuracy, "agreement_ci_low": same.ci_low, "agreement_ci_high": same.ci_high,
            "agreement_n": len(common)}


def describe(metrics: dict) -> str:
    """', same answer as unpruned on 62% [50%, 73%]' or '' without an agreement."""
    if metrics.get("agreement") is None:
        return ""
    return (f", same answer as the unpruned model on {metrics['agreement']:.0%} "
            f"[{metrics['agreement_ci_low']:.0%}, {metrics['agreement_ci_high']:.0%}]")

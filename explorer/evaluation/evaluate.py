"""Evaluation: any registered task's accuracy with its 95% Wilson interval, and validation loss.

`run_task` scores a task (MMLU letter, MMLU cloze, the knowledge quiz, ...) and returns a
`TaskReport`, the one result shape the CLI writes, the pages plot and the jobs store.
`validation_loss` is the mean next-token loss on held-out text (documents never used for
calibration or healing), and `normalized_loss` puts it on the paper's 0-to-random scale.
`quick_eval` is both at once, the snapshot every healing and sweep curve plots.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Iterator

import torch

from explorer.lm.data import batches, check_settings, make_samples, pad_batch
from explorer.core.errors import ExplorerError
from explorer.lm.models import LoadedModel
from explorer.evaluation.scoring import inference
from explorer.evaluation.tasks import QuestionResult, Task, check_limit, get_task

if TYPE_CHECKING:
    from explorer.surgery.heal import HealConfig


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


@dataclass
class TaskReport:
    """One task's result. `metric` names what `accuracy` measures ("acc", or "acc_norm" for cloze
    tasks); `alt_metrics` holds the others (e.g. the raw-likelihood "acc" of a cloze task)."""

    task: str
    source: str
    n_questions: int
    accuracy: float
    ci_low: float
    ci_high: float
    chance: float
    per_question: list[QuestionResult]
    seconds: float
    metric: str = "acc"
    alt_metrics: dict[str, Accuracy] = field(default_factory=dict)

    @classmethod
    def from_results(
        cls, task: str, source: str, chance: float, results: list[QuestionResult], seconds: float, metric: str = "acc"
    ) -> "TaskReport":
        if not results:
            raise ExplorerError(f"Task '{task}' produced no questions to score.")
        n = len(results)
        main = Accuracy.of(sum(r.correct for r in results), n)
        alt_names = sorted({name for r in results for name in r.alt_preds})
        alt = {
            name: Accuracy.of(sum(r.alt_preds.get(name) == r.gold for r in results), n) for name in alt_names
        }
        return cls(task, source, n, main.accuracy, main.ci_low, main.ci_high, chance, results, seconds, metric, alt)

    @classmethod
    def from_json(cls, data: dict) -> "TaskReport":
        """The inverse of `to_json`, for reports kept in the run store."""
        return cls(
            data["task"], data["source"], data["n_questions"], data["accuracy"], data["ci_low"], data["ci_high"],
            data["chance"], [QuestionResult(**q) for q in data["per_question"]], data["seconds"], data["metric"],
            {name: Accuracy(**acc) for name, acc in data["alt_metrics"].items()},
        )

    def summary(self) -> str:
        """One line for the CLI and logs, e.g. 'accuracy 0.43 [0.38, 0.48] on 300 questions (chance 0.25)'."""
        line = (
            f"accuracy {self.accuracy:.2f} [{self.ci_low:.2f}, {self.ci_high:.2f}] on {self.n_questions} questions "
            f"(chance {self.chance:.2f})"
        )
        if self.metric != "acc" or self.alt_metrics:
            line += f" by {self.metric}"
        for name, acc in self.alt_metrics.items():
            line += f"; {name} {acc.accuracy:.2f} [{acc.ci_low:.2f}, {acc.ci_high:.2f}]"
        return line

    def to_json(self) -> dict:
        return {
            "task": self.task,
            "source": self.source,
            "metric": self.metric,
            "accuracy": self.accuracy,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
            "chance": self.chance,
            "n_questions": self.n_questions,
            "seconds": self.seconds,
            "alt_metrics": {name: asdict(acc) for name, acc in self.alt_metrics.items()},
            "per_question": [asdict(r) for r in self.per_question],
        }


def run_task(loaded: LoadedModel, task: str | Task, limit: int | None = None, batch_size: int = 8, **options) -> TaskReport:
    """Score a task by name (built with `options`) or an already built task, timed."""
    check_limit(limit)
    check_settings(1, 2, batch_size)
    if isinstance(task, str):
        task = get_task(task, **options)
    elif options:
        raise ExplorerError(f"Options {', '.join(options)} only apply when the task is given by name.")
    started = time.perf_counter()
    results = task.score(loaded, limit=limit, batch_size=batch_size)
    seconds = time.perf_counter() - started
    return TaskReport.from_results(task.name, task.source, task.chance, results, seconds, getattr(task, "metric", "acc"))


def validation_loss(
    loaded: LoadedModel, source: str = "embedded", samples: int = 32, seq_len: int = 256, batch_size: int = 8
) -> float:
    """Mean next-token negative log-likelihood (nats per token) over held-out documents
    (`validation_loss_with_error` without its standard error)."""
    return validation_loss_with_error(loaded, source, samples, seq_len, batch_size)[0]


def validation_loss_with_error(
    loaded: LoadedModel, source: str = "embedded", samples: int = 32, seq_len: int = 256, batch_size: int = 8
) -> tuple[float, float]:
    """(loss, its standard error over documents): the mean next-token NLL in nats per token.

    Every real token after the first of each sample is predicted once; padding is never a
    target. Tokens, not samples, are averaged, so short samples do not weigh more; the error
    is that ratio estimator's (`ratio_standard_error`), i.e. how much the loss would move with
    other documents of the same kind. 0 with a single document."""
    check_settings(samples, seq_len, batch_size)
    ids = make_samples(loaded.tokenizer, source, samples, seq_len, split="heldout").ids
    sums: list[float] = []
    counts: list[int] = []
    with inference(loaded.model):
        for input_ids, mask, logits in _logits(loaded, ids, batch_size):
            real = mask[:, 1:].bool()  # the real targets only, as one contiguous [tokens, vocab] block (a
            # transposed [batch, vocab, tokens] view made cross-entropy cost as much as several layers)
            per_token = torch.nn.functional.cross_entropy(logits[:, :-1][real].float(), input_ids[:, 1:][real], reduction="none")
            rows = torch.arange(real.shape[0], device=real.device).unsqueeze(1).expand_as(real)[real]
            per_document = torch.zeros(real.shape[0], dtype=torch.float64, device=per_token.device)
            sums += per_document.index_add_(0, rows, per_token.double()).tolist()
            counts += real.sum(dim=1).tolist()
    loss = sum(sums) / sum(counts)
    if not math.isfinite(loss):
        raise ExplorerError("The validation loss is not finite (NaN or inf): the model's weights are broken.")
    return loss, ratio_standard_error(sums, counts)


def ratio_standard_error(sums: list[float], counts: list[int]) -> float:
    """Standard error of sum(sums) / sum(counts) over the documents (the delta method for a
    ratio of means): sqrt(sum((s_d - R c_d)^2) / (D (D - 1))) / mean(c)."""
    docs = len(sums)
    if docs < 2:
        return 0.0
    ratio = sum(sums) / sum(counts)
    mean_count = sum(counts) / docs
    spread = sum((s - ratio * c) ** 2 for s, c in zip(sums, counts)) / (docs * (docs - 1))
    return math.sqrt(spread) / mean_count


def _logits(loaded: LoadedModel, ids: list[list[int]], batch_size: int) -> Iterator[tuple[torch.Tensor, ...]]:
    """(input_ids, mask, logits) per padded batch: one forward each, or one streamed pass
    (explorer.lm.stream) over all batches for a model streamed layer by layer."""
    from explorer.lm.stream import StreamedModel

    if isinstance(loaded, StreamedModel):
        yield from loaded.logits_batches(ids, batch_size)
        return
    for chunk in batches(ids, batch_size):
        input_ids, mask = pad_batch(chunk, loaded.tokenizer.pad_token_id or 0)
        input_ids, mask = input_ids.to(loaded.device), mask.to(loaded.device)
        yield input_ids, mask, loaded.model(input_ids=input_ids, attention_mask=mask, use_cache=False).logits


def quick_eval(loaded: LoadedModel, config: HealConfig, timings: dict[str, float] | None = None) -> dict:
    """Held-out loss (with its standard error over documents) and task accuracy (with its 95% Wilson
    interval): the numbers every curve plots. `timings` accumulates the seconds spent in "loss" and
    "scoring" (the sweep benchmark's profile)."""
    from explorer.evaluation.agreement import predictions

    config = config.resolved(loaded.device)
    started = time.perf_counter()
    val_loss, val_loss_se = validation_loss_with_error(loaded, config.source, config.val_samples, config.seq_len,
                                                       config.eval_batch_size)
    scored = time.perf_counter()
    report = run_task(loaded, config.eval_task, config.eval_limit, config.eval_batch_size, **config.eval_options)
    if timings is not None:
        timings["loss"] = timings.get("loss", 0.0) + scored - started
        timings["scoring"] = timings.get("scoring", 0.0) + time.perf_counter() - scored
    return {
        "val_loss": val_loss,
        "val_loss_se": val_loss_se,  # standard error over the held-out documents
        "task": config.eval_task,
        "accuracy": report.accuracy,
        "ci_low": report.ci_low,
        "ci_high": report.ci_high,
        "chance": report.chance,
        "predictions": predictions(report.per_question),  # compared with the unpruned model's (explorer.evaluation.agreement)
    }


def normalized_loss(loss: float, base_loss: float, vocab_size: int) -> float:
    """(loss - base_loss) / (ln|V| - base_loss): 0 for the unpruned model, 1 for a model that
    guesses uniformly over the vocabulary (loss ln|V|).

    This is our reading of the paper's normalized validation loss (Gromov et al., 2403.17887):
    it puts every model on the same scale between "as good as unpruned" and "random guessing",
    so models with different base losses and vocabularies can share one plot. Values above 1
    mean worse than uniform guessing (a confidently wrong model)."""
    random_loss = math.log(vocab_size)
    if base_loss >= random_loss:
        raise ExplorerError(
            f"The unpruned loss {base_loss:.3f} is no better than uniform guessing (ln {vocab_size} = {random_loss:.3f})."
        )
    return (loss - base_loss) / (random_loss - base_loss)

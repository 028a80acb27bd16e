"""Evaluation: any registered task's accuracy with its 95% Wilson interval, and validation loss.

`run_task` scores a task (MMLU letter, MMLU cloze, the knowledge quiz, ...) and returns a
`TaskReport`, the one result shape the CLI writes, the pages plot and the jobs store.
`validation_loss` is the mean next-token loss on held-out text (documents never used for
calibration or healing), and `normalized_loss` puts it on the paper's 0-to-random scale.
`quick_eval` is both at once, the snapshot every healing and sweep curve plots, with a generation
task's accuracy beside the likelihood task's when one is set (`generation_metrics`).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Protocol

import torch

from explorer.core.errors import ExplorerError
from explorer.evaluation.accuracy import Accuracy
from explorer.evaluation.agreement import predictions
from explorer.evaluation.questions import QuestionResult, check_limit
from explorer.evaluation.tasks import Task, default_eval_task, fitting_options, generation_task_names, get_task, is_generative
from explorer.lm.data import check_settings, make_samples
from explorer.lm.forward import inference
from explorer.lm.models import LanguageModel


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


def run_task(loaded: LanguageModel, task: str | Task, limit: int | None = None, batch_size: int = 8, **options) -> TaskReport:
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
    loaded: LanguageModel, source: str = "embedded", samples: int = 32, seq_len: int = 256, batch_size: int = 8
) -> float:
    """Mean next-token negative log-likelihood (nats per token) over held-out documents
    (`validation_loss_with_error` without its standard error)."""
    return validation_loss_with_error(loaded, source, samples, seq_len, batch_size)[0]


def validation_loss_with_error(
    loaded: LanguageModel, source: str = "embedded", samples: int = 32, seq_len: int = 256, batch_size: int = 8
) -> tuple[float, float]:
    """(loss, its standard error over documents): the mean next-token NLL in nats per token.

    Every real token after the first of each sample is predicted once; padding is never a
    target. Tokens, not samples, are averaged, so short samples do not weigh more; the error
    is that ratio estimator's (`ratio_standard_error`), i.e. how much the loss would move with
    other documents of the same kind. 0 with a single document."""
    check_settings(samples, seq_len, batch_size)
    return token_loss(loaded, make_samples(loaded.tokenizer, source, samples, seq_len, split="heldout").ids, batch_size)


def token_loss(loaded: LanguageModel, ids: list[list[int]], batch_size: int = 8) -> tuple[float, float]:
    """(loss, its standard error over documents) of the given token sequences, as
    `validation_loss_with_error` defines them: what the held-out loss and an iterative
    selection's calibration loss (explorer.analysis.strategies) both compute."""
    sums: list[float] = []
    counts: list[int] = []
    with inference(loaded.model):
        for input_ids, mask, logits in loaded.logits_batches(ids, batch_size):
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


@dataclass(frozen=True)
class EvalSettings:
    """What one snapshot evaluation measures: the held-out loss on `val_samples` documents of
    `source` and `eval_task`'s accuracy on `eval_limit` questions. Healing and the sweep each
    derive theirs (`evaluation()`); the field names are the ones stored runs are keyed by."""

    source: str = "embedded"
    val_samples: int = 16
    seq_len: int = 128
    eval_task: str | None = None  # None: the default task (a knowledge quiz)
    eval_limit: int = 32
    eval_options: dict = field(default_factory=dict)
    eval_batch_size: int = 8
    gen_task: str | None = None  # a generation task scored beside eval_task (None: none)
    gen_limit: int = 32

    def evaluation(self) -> "EvalSettings":
        """Itself with the default task filled in: an `Evaluated` like the settings it comes from."""
        return self if self.eval_task else EvalSettings(**{**asdict(self), "eval_task": default_eval_task()})


class Evaluated(Protocol):
    """Settings that say how their models are evaluated (HealConfig, SweepSettings, EvalSettings)."""

    def evaluation(self) -> EvalSettings: ...


def check_generation_task(name: str | None, options: dict) -> None:
    """A generation task given beside the likelihood task must be one (and take the options that fit it)."""
    if not name:
        return
    if not is_generative(name):
        raise ExplorerError(f"'{name}' is not a generation task: choose one of {', '.join(generation_task_names())}.")
    get_task(name, **fitting_options(name, options))


def generation_metrics(loaded: LanguageModel, settings: EvalSettings, examples: int = 8) -> dict:
    """The generation task's accuracy (95% Wilson interval), its predictions (for agreement with the
    unpruned model) and the first `examples` questions' outputs, under "gen_" names beside quick_eval's."""
    report = run_task(loaded, settings.gen_task, settings.gen_limit, settings.eval_batch_size,
                      **fitting_options(settings.gen_task, settings.eval_options))
    return {
        "gen_task": settings.gen_task,
        "gen_accuracy": report.accuracy,
        "gen_ci_low": report.ci_low,
        "gen_ci_high": report.ci_high,
        "gen_chance": report.chance,
        "gen_predictions": predictions(report.per_question),
        "gen_examples": [{"id": r.id, "output": r.output, "pred": r.pred, "gold": r.gold} for r in report.per_question[:examples]],
    }


def quick_eval(loaded: LanguageModel, config: Evaluated, timings: dict[str, float] | None = None,
               generative: bool = True) -> dict:
    """Held-out loss (with its standard error over documents) and task accuracy (with its 95% Wilson
    interval): the numbers every curve plots, and with a generation task set (and `generative`) its
    accuracy too (`generation_metrics`). `timings` accumulates the seconds spent in "loss",
    "scoring" and "generation" (the sweep benchmark's profile)."""
    settings = config.evaluation()
    started = time.perf_counter()
    val_loss, val_loss_se = validation_loss_with_error(loaded, settings.source, settings.val_samples, settings.seq_len,
                                                       settings.eval_batch_size)
    scored = time.perf_counter()
    report = run_task(loaded, settings.eval_task, settings.eval_limit, settings.eval_batch_size, **settings.eval_options)
    generating = time.perf_counter()
    metrics = {
        "val_loss": val_loss,
        "val_loss_se": val_loss_se,  # standard error over the held-out documents
        "task": settings.eval_task,
        "accuracy": report.accuracy,
        "ci_low": report.ci_low,
        "ci_high": report.ci_high,
        "chance": report.chance,
        "n_questions": report.n_questions,  # every accuracy is shown with its n
        "predictions": predictions(report.per_question),  # compared with the unpruned model's (explorer.evaluation.agreement)
    }
    if generative and settings.gen_task:
        metrics.update(generation_metrics(loaded, settings))
    if timings is not None:
        timings["loss"] = timings.get("loss", 0.0) + scored - started
        timings["scoring"] = timings.get("scoring", 0.0) + generating - scored
        timings["generation"] = timings.get("generation", 0.0) + time.perf_counter() - generating
    return metrics


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

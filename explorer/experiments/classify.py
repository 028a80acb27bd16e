"""The accuracy-vs-k curve of "Why Lift so Heavy?" (Yuan, Nie, Ma & Färber, arXiv 2402.11700): for
each strategy (any whole-layer strategy of explorer.analysis.strategies; "top-cut" is the paper's),
each k (layers kept) and each mode, one "point" event with
every held-out example's prediction and gold label, the accuracy computed from them (95% Wilson
interval), the chance line, the train / test split sizes and the finetuning cost in seconds.
Points go to a store run of kind "classify", so the background job and the page draw them live.
The finetuning itself is explorer.surgery.finetune.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Callable

from explorer.analysis.strategies import STRATEGIES, choose_layers
from explorer.core.errors import ExplorerError
from explorer.core.options import SHARED, setting
from explorer.evaluation.accuracy import Accuracy
from explorer.evaluation.questions import check_limit
from explorer.evaluation.tasks import get_task
from explorer.lm.blocks import LayerSet
from explorer.lm.layers import pruned_view
from explorer.lm.models import LoadedModel, load_model
from explorer.state.cache import strategy_context
from explorer.state.store import Store, of_kind
from explorer.surgery.finetune import MODES, ClassifyCancelled, FinetuneConfig, measure

CLASSIFY_STRATEGIES = tuple(name for name, s in STRATEGIES.items() if s.unit == "layers")  # cuts of whole layers
CLASSIFY_TASKS = ("sst2", "agnews")
OnEvent = Callable[[dict], None]
ShouldStop = Callable[[], bool]


@dataclass(frozen=True)
class ClassifySettings:
    """Everything a classify run measures: the task and split, the cuts, the modes, finetuning."""

    model: str = setting("embedded", "the model", cli=SHARED)
    task: str = setting("sst2", "the classification task", choices=CLASSIFY_TASKS, label="Task")
    data_file: str | None = setting("embedded", "'embedded' (sst2: 200 Pang & Lee sentences from gensim), a .csv/.jsonl "
                                    "file, or 'hub'", parse=lambda text: None if text.strip() == "hub" else text.strip(),
                                    label="Data")  # None: the hub
    shots: int = setting(0, "demonstrations in every prompt", label="Demonstrations")
    label_words: str | None = setting(None, "comma-separated, one per label (default: terrible,great / World,...)",
                                      label="Label words")
    train: int = setting(80, "training examples held out of the scored set", label="Training examples (held out)")
    strategies: tuple[str, ...] = setting(("top-cut",), f"comma-separated cuts of L-k layers, of {', '.join(CLASSIFY_STRATEGIES)}:"
                                          " top-cut keeps layers 0..k-1 (the paper's), similarity drops the most similar block",
                                          flag="--strategy", label="Strategies")
    keep: tuple[int, ...] = setting((1, 2, 4, 8, 15, 22, 30), "comma-separated layers kept, k = 1..L",
                                    parse=lambda text: parse_ints(text, "--keep"), label="Layers kept k")
    modes: tuple[str, ...] = setting(MODES, "comma-separated: icl (no training), prompt-ft (label words finetuned), "
                                     "head-ft (a linear head)", flag="--mode", label="Modes")
    finetune: dict = setting(help="FinetuneConfig's fields (their own options)", factory=dict, cli=SHARED)
    limit: int | None = setting(None, "score at most this many held-out examples (default: all)", label="Scored examples")
    batch_size: int = setting(8, "examples per scoring batch", label="Batch size")
    text: str = setting("embedded", "calibration text of what a strategy needs (the similarity heatmap, ...)", flag="--text-file",
                        label="Calibration text")
    sim_samples: int = setting(32, "heatmap samples (similarity strategy)", label="Heatmap samples")
    seq_len: int = setting(128, "tokens per heatmap sample", label="Tokens per sample")
    device: str | None = setting(None, "the device", cli=SHARED)

    def __post_init__(self) -> None:
        for name in ("strategies", "keep", "modes"):
            object.__setattr__(self, name, tuple(getattr(self, name)))

    def task_options(self) -> dict:
        options = {"data_file": self.data_file, "shots": self.shots, "train": self.train}
        return {**options, **({"label_words": self.label_words} if self.label_words else {})}

    def make_task(self):
        if self.task not in CLASSIFY_TASKS:
            raise ExplorerError(f"classify takes a classification task ({' or '.join(CLASSIFY_TASKS)}), not '{self.task}'.")
        return get_task(self.task, **self.task_options())

    def finetune_config(self) -> FinetuneConfig:
        return FinetuneConfig(**self.finetune)

    def check(self):
        """Reject bad settings before any model loads, finetuning's too even when only icl runs (a
        typo is a typo); returns the task (with its splits)."""
        if not self.strategies or not set(self.strategies) <= set(CLASSIFY_STRATEGIES):
            raise ExplorerError(f"Choose strategies among {', '.join(CLASSIFY_STRATEGIES)} (got {', '.join(self.strategies) or 'none'}).")
        if not self.modes or not set(self.modes) <= set(MODES):
            raise ExplorerError(f"Choose modes among {', '.join(MODES)} (got {', '.join(self.modes) or 'none'}).")
        if not self.keep or min(self.keep) < 1:
            raise ExplorerError(f"Layers kept (k) must be at least 1, got {', '.join(map(str, self.keep)) or 'none'}.")
        check_limit(self.limit)
        for mode in self.modes:
            self.finetune_config().check(mode)
        task = self.make_task()
        if any(m != "icl" for m in self.modes) and not task.train_examples:
            raise ExplorerError(f"{task.name} has no training examples for {'/'.join(m for m in self.modes if m != 'icl')}: "
                                "hold some out (train N, e.g. 80) or use mode icl only.")
        return task

    def to_json(self) -> dict:
        return {**asdict(self), "strategies": list(self.strategies), "keep": list(self.keep), "modes": list(self.modes)}

    @classmethod
    def from_json(cls, data: dict) -> "ClassifySettings":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def parse_ints(text: str, what: str) -> tuple[int, ...]:
    """'1,2,4' -> (1, 2, 4)."""
    try:
        return tuple(int(item) for item in text.split(",") if item.strip())
    except ValueError as exc:
        raise ExplorerError(f"{what} must be comma-separated whole numbers such as 1,2,4 (got '{text}').") from exc


def check_keep(keep: tuple[int, ...], num_layers: int) -> None:
    if bad := [k for k in keep if not 1 <= k <= num_layers]:
        raise ExplorerError(f"k = {bad[0]} layers kept is out of range: this model has {num_layers} layers, keep 1 to {num_layers}.")


def point_accuracy(predictions: list) -> dict:
    """Accuracy and its 95% Wilson interval, computed from the (id, pred, gold) predictions."""
    acc = Accuracy.of(sum(pred == gold for _, pred, gold in predictions), len(predictions))
    return {"accuracy": acc.accuracy, "ci_low": acc.ci_low, "ci_high": acc.ci_high}


def classify_points(store: Store, run_id: int) -> list[dict]:
    return of_kind(store.events(run_id), "point")


def _add(store: Store, run_id: int, event: dict, on_event: OnEvent) -> None:
    store.add_event(run_id, event)
    on_event(event)


def run_classify(loaded: LoadedModel, settings: ClassifySettings, store: Store, run_id: int,
                 on_event: OnEvent = lambda event: None, should_stop: ShouldStop = lambda: False) -> dict:
    """Every (strategy, k, mode) point as an event of `run_id`; returns the run's result.
    Two strategies that cut the same block (k = L) share one measurement."""
    task = settings.check()
    config = settings.finetune_config()
    num_layers = loaded.num_layers
    check_keep(settings.keep, num_layers)
    context = strategy_context(
        loaded, settings.strategies if min(settings.keep) < num_layers else (), settings.text, settings.sim_samples,
        settings.seq_len, settings.batch_size, store,
        lambda text: _add(store, run_id, {"kind": "phase", "phase": f"{text} (computed once, then cached)"}, on_event))
    sizes = {"n_train": len(task.train_examples), "n_test": len(task.examples[: settings.limit])}
    total = len(settings.keep) * len(settings.strategies) * len(settings.modes)
    _add(store, run_id, {"kind": "plan", "points": total, "num_layers": num_layers, "source": task.source, **sizes}, on_event)
    measured: dict[tuple[LayerSet, str], dict] = {}
    points = []
    for k in sorted(set(settings.keep)):
        for strategy in settings.strategies:
            block = choose_layers(strategy, num_layers - k, context)
            for mode in settings.modes:
                if should_stop():
                    raise ClassifyCancelled(f"The run was cancelled after {len(points)} of {total} points.")
                key = (block, mode)
                if key not in measured:
                    _add(store, run_id, {"kind": "phase", "phase": f"{strategy} k={k}: {mode}"}, on_event)
                    measured[key] = measure(pruned_view(loaded, block), task, mode, config, settings.limit,
                                            settings.batch_size, should_stop)
                result = measured[key]
                point = {"kind": "point", "strategy": strategy, "k": k, "mode": mode, "start": block.start, "n": block.n,
                         **({} if block.contiguous else {"layers": list(block.removed)}),
                         "num_layers": num_layers, "chance": task.chance, **sizes, "steps": 0 if mode == "icl" else config.steps,
                         **point_accuracy(result["predictions"]), **result,
                         "predictions": [{"id": i, "pred": task.words[p], "gold": task.words[g]} for i, p, g in result["predictions"]]}
                points.append(point)
                _add(store, run_id, point, on_event)
    return {"task": task.name, "source": task.source, "num_layers": num_layers, **sizes, "points": points}


def describe_point(point: dict) -> str:
    return (f"{point['strategy']} k={point['k']} {point['mode']}: accuracy {point['accuracy']:.2f} "
            f"[{point['ci_low']:.2f}, {point['ci_high']:.2f}] (chance {point['chance']:.2f}; train {point['n_train']}, "
            f"test {point['n_test']}; {point['train_seconds']:.1f}s finetuning)")


def execute(store: Store, run_id: int, on_event: OnEvent = lambda event: None, should_stop: ShouldStop = lambda: False) -> dict:
    """Load the model once and run the classify run stored as `run_id` (the job's and the CLI's body)."""
    settings = ClassifySettings.from_json(store.get_run(run_id).settings)
    settings.check()
    _add(store, run_id, {"kind": "phase", "phase": "loading the model"}, on_event)
    return run_classify(load_model(settings.model, device=settings.device), settings, store, run_id, on_event, should_stop)

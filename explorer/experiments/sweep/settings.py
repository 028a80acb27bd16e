"""What a sweep measures: its settings (the CLI options and the Sweep page's widgets come from
their field metadata) and the teaching preset."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from explorer.analysis.strategies import PAPER_STRATEGIES, STRATEGIES
from explorer.core.errors import ExplorerError
from explorer.core.options import SHARED, setting
from explorer.evaluation.degeneration import DegenerationSettings
from explorer.evaluation.evaluate import EvalSettings, check_generation_task
from explorer.evaluation.questions import check_limit
from explorer.evaluation.tasks import default_eval_task, get_task
from explorer.lm.data import check_settings, split_documents
from explorer.surgery.distill import OBJECTIVES
from explorer.surgery.repair import REPAIRS

Key = tuple[str, int, str]  # (strategy, n, repair): repair in REPAIR_AXIS


REPAIR_AXIS = ("none", "linear", "lora")


@dataclass(frozen=True)
class SweepSettings:
    """Everything that determines a sweep's points; equal settings (and weights) resume each other."""

    model: str = setting("embedded", "the model", cli=SHARED)
    strategies: tuple[str, ...] = setting(PAPER_STRATEGIES, f"comma-separated strategies to compare, of {', '.join(STRATEGIES)}"
                                          " (attention-drop and mlp-drop: n counts sub-layers of that kind)", label="Strategies")
    fractions: tuple[float, ...] | None = setting(  # None = every `stride`-th n
        None, "comma-separated fractions of layers to drop, each in [0, 1)", label="Fractions of layers dropped, each in [0, 1)",
        parse=lambda text: parse_fractions(text), exclusive="points")
    stride: int = setting(1, "every stride-th n from 0 to L-1", label="Stride", exclusive="points")
    task: str = setting("", "a registered task (default: the strongest small-model quiz): quizzes give a small "
                         "model a clear signal above chance; MMLU needs a larger model", label="Task")  # "" = tasks.default_eval_task()
    limit: int = setting(32, "questions per point", label="Questions per point")
    gen_task: str = setting("", "a generation task measured at every point beside the task, for a generative curve "
                            "per strategy, e.g. quiz-capitals-gen (default: none)", label="Generation task")
    gen_limit: int = setting(32, "questions of the generation task per point", label="Generation questions per point")
    continuations: int = setting(0, "held-out documents continued freely at every point for the repetition rate and "
                                 "the unpruned model's log-probability of the text (0: none)",
                                 label="Free continuations per point")
    task_options: dict = setting(help="the task's options (--mmlu-dir, --subjects, --shots, --split, --option)",
                                 factory=dict, cli=SHARED)
    heal_steps: int = setting(0, "LoRA healing steps per point, 0 for none (its other settings: heal's)",
                              label="Healing steps per point (0 = none)")
    heal_objective: str = setting("nll", "what each point's heal minimises: nll (the paper), kl (distillation from the "
                                  "unpruned model, which the sweep holds anyway) or nll+kl", choices=OBJECTIVES,
                                  label="Healing objective")
    repair: str = setting("none", "linear: also measure each point after a linear repair (a fitted map folded in, "
                          "no training; one fit a point)", choices=REPAIRS, label="Linear repair per point")
    speed: bool = setting(False, "also time each point's pruned model against the unpruned one (decode at batch 1, "
                          "interleaved in one process; 10-60 s a point for the embedded model on CPU, more on a loaded machine)",
                          label="Measure each point's speedup (slower)")
    repair_samples: int = setting(64, "calibration documents for each point's linear repair", label="Repair samples")
    text: str = setting("embedded", "text for the heatmap, the held-out loss and healing: 'embedded', 'c4' or a "
                        ".txt/.jsonl/.parquet file", flag="--text-file", label="Text for heatmap, held-out loss and healing")
    val_samples: int = setting(16, "held-out documents for the loss", label="Held-out samples")
    sim_samples: int = setting(32, "calibration samples for the heatmap and what other strategies need", flag="--samples",
                               label="Heatmap samples")
    seq_len: int = setting(128, "tokens per sample", label="Tokens per sample")
    batch_size: int = setting(8, "samples per forward pass", label="Batch size")
    device: str | None = setting(None, "the device", cli=SHARED)
    device_map: str | dict | None = setting(None, "'auto' spreads a large model over the devices (accelerate)")
    load_in_4bit: bool = setting(False, "bitsandbytes nf4 weights", cli=SHARED)
    trust_remote_code: bool = setting(False, "run the model's own code from the hub (models you trust only)", cli=SHARED)

    def __post_init__(self) -> None:
        object.__setattr__(self, "strategies", tuple(self.strategies))
        if self.fractions is not None:
            object.__setattr__(self, "fractions", tuple(float(f) for f in self.fractions))
        object.__setattr__(self, "task", self.task or default_eval_task())

    def check(self) -> None:
        """Reject impossible settings before any model loads."""
        if not self.strategies:
            raise ExplorerError("Choose at least one strategy.")
        if unknown := [s for s in self.strategies if s not in STRATEGIES]:
            raise ExplorerError(f"Unknown strategy '{unknown[0]}': choose from {', '.join(STRATEGIES)}.")
        if self.fractions is not None:
            if not self.fractions:
                raise ExplorerError("Give at least one fraction of layers to drop.")
            if bad := [f for f in self.fractions if not 0 <= f < 1]:
                raise ExplorerError(f"Fractions of layers dropped must be in [0, 1): got {bad[0]:g}.")
        if self.stride < 1:
            raise ExplorerError(f"The stride must be at least 1 (got {self.stride}).")
        if self.repair not in REPAIRS:
            raise ExplorerError(f"Unknown repair '{self.repair}': choose none or linear (a LoRA heal is --heal-steps).")
        check_settings(self.repair_samples, self.seq_len, self.batch_size)
        if self.heal_steps < 0:
            raise ExplorerError(f"Healing steps must be 0 (no healing) or more (got {self.heal_steps}).")
        if self.heal_objective not in OBJECTIVES:
            raise ExplorerError(f"Unknown healing objective '{self.heal_objective}': choose {', '.join(OBJECTIVES)}.")
        check_limit(self.limit)
        check_limit(self.gen_limit)
        check_generation_task(self.gen_task, self.task_options)
        if self.continuations < 0:
            raise ExplorerError(f"Free continuations per point must be 0 (none) or more (got {self.continuations}).")
        check_settings(self.val_samples, self.seq_len, self.batch_size)
        check_settings(self.sim_samples, self.seq_len, self.batch_size)
        get_task(self.task, **self.task_options)  # unknown task or options fail here
        next(iter(split_documents(self.text, "train")), None)  # a missing text file fails here

    def evaluation(self) -> EvalSettings:
        """Every point's evaluation: the task's accuracy on `limit` questions, the held-out loss, and
        the generation task's accuracy on `gen_limit` questions when one is set."""
        return EvalSettings(self.text, self.val_samples, self.seq_len, self.task or default_eval_task(), self.limit,
                            dict(self.task_options), self.batch_size, self.gen_task or None, self.gen_limit)

    def degeneration(self) -> DegenerationSettings | None:
        """The free continuations each point writes (None without any): held-out text of the sweep's
        source, the sweep's batch size."""
        if not self.continuations:
            return None
        return DegenerationSettings(source=self.text, samples=self.continuations, batch_size=self.batch_size)

    def block_sizes(self, num_layers: int) -> list[int]:
        """The n values: f * L rounded half up for each fraction (at most L - 1), or 0, stride, 2*stride, ...
        below L. n = 0 is always included: it is the baseline every other point is normalized by."""
        if self.fractions is None:
            sizes = set(range(0, num_layers, self.stride))
        else:
            sizes = {min(math.floor(f * num_layers + 0.5), num_layers - 1) for f in self.fractions}
        return sorted(sizes | {0})

    def to_json(self) -> dict:
        data = asdict(self)
        data["strategies"] = list(self.strategies)
        data["fractions"] = list(self.fractions) if self.fractions is not None else None
        return data

    @classmethod
    def from_json(cls, data: dict) -> "SweepSettings":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def teaching_preset(**overrides) -> SweepSettings:
    """The embedded model on CPU in a few minutes: every third n, the paper's two strategies,
    short samples, no healing, and the linear-repair curve (one closed-form fit per point, no training). With 64 quiz questions per
    point the unpruned model's 95% interval ([0.74, 0.91]) and a collapsed model's (about
    [0.23, 0.45]) stay apart; with 24 the intervals overlap and the collapse is hard to see.
    The loss uses 32 held-out documents (of the 34 the embedded corpus holds out): each point's
    standard error over documents is 0.012-0.078 on the normalized scale, below the smallest step
    between successive points (0.075); 8 documents gave 0.015-0.119 (README, science section)."""
    preset = dict(model="embedded", strategies=("similarity", "simple"), stride=3, limit=64, val_samples=32,
                  sim_samples=16, seq_len=64, heal_steps=0, repair="linear")
    return SweepSettings(**{**preset, **overrides})


def parse_fractions(text: str) -> tuple[float, ...]:
    """'0, 0.1, 0.25' -> (0.0, 0.1, 0.25); the range is checked by SweepSettings.check."""
    try:
        return tuple(float(item) for item in text.replace(";", ",").split(",") if item.strip())
    except ValueError as exc:
        raise ExplorerError(f"Fractions must be comma-separated numbers such as 0, 0.1, 0.25 (got '{text}').") from exc

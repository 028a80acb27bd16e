"""Phase-transition sweep: accuracy and loss against the fraction of layers dropped.

For each strategy ("similarity", "simple", "top-cut") and each block size n, the block the
strategy picks is removed from a copy of the model that shares its weights (one model load
per sweep, no weight copies), and the task accuracy (with its 95% Wilson interval) and the
held-out loss are measured; optionally each pruned model is healed for a short fixed budget
and measured again. This reproduces the
paper's Figures 1-2: accuracy holds, then collapses to chance at a sharp fraction, while the
normalized loss rises smoothly (Gromov et al., 2403.17887).

With `repair="linear"` each pruned model is also repaired without training (explorer.repair:
one fitted map folded into the layer before the block) and measured: repair is an axis, "none",
"linear" or "lora" (the heal).

Every point is an event of a "sweep" run in the store, so pages plot points live. A point is
keyed by (strategy, n, repair) (points stored before repair was an axis carry only "healed"): a sweep with the same settings and model weights reuses the
points any earlier sweep run finished (a restart after a crash or cancel resumes where it
stopped; a finished sweep becomes a cache hit). Two strategies that pick the same block for
an n (n = 0 for all of them, and often "similarity" and "simple") share one measurement.

Without healing, the unpruned model's evaluation is recorded once and each point runs only
the layers after its block (`explorer.reuse`: the layers below a block compute what they
compute unpruned). Healed points change the weights, so a healing sweep measures every
pruned model whole.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import asdict, dataclass, fields
from typing import Callable, Iterator

from explorer.blocks import Block
from explorer.data import check_settings, split_documents
from explorer.errors import Cancelled, ExplorerError
from explorer.models import LoadedModel, load_model
from explorer.options import SHARED, setting, widget
from explorer.prune import STRATEGIES, pruned_view, strategy_block
from explorer.repair import REPAIRS
from explorer.tasks import default_eval_task

Key = tuple[str, int, str]  # (strategy, n, repair): repair in REPAIR_AXIS
REPAIR_AXIS = ("none", "linear", "lora")
OnEvent = Callable[[dict], None]
Measured = tuple[Block, dict[str, dict], float]  # a block, measure_block's metrics by repair, seconds it took
# An executor measures blocks (measure_block on each) and yields them as they finish, in any order;
# it stops early, yielding no more, once should_stop() turns true. Local: measure_locally; Ray: explorer.distributed.
Executor = Callable[[LoadedModel, list[Block], "SweepSettings", Callable[[], bool]], Iterator[Measured]]


class SweepCancelled(Cancelled):
    """The user stopped the sweep; its finished points stay and a restart resumes from them."""


@dataclass(frozen=True)
class SweepSettings:
    """Everything that determines a sweep's points; equal settings (and weights) resume each other."""

    model: str = setting("embedded", "the model", cli=SHARED)
    strategies: tuple[str, ...] = setting(STRATEGIES, "comma-separated strategies to compare, of similarity, simple and top-cut",
                                          label="Strategies")
    fractions: tuple[float, ...] | None = setting(  # None = every `stride`-th n
        None, "comma-separated fractions of layers to drop, each in [0, 1)", label="Fractions of layers dropped, each in [0, 1)",
        parse=lambda text: parse_fractions(text), exclusive="points")
    stride: int = setting(1, "every stride-th n from 0 to L-1", label="Stride", exclusive="points")
    task: str = setting("", "a registered task (default: the strongest small-model quiz): quizzes give a small "
                         "model a clear signal above chance; MMLU needs a larger model", label="Task")  # "" = tasks.default_eval_task()
    limit: int = setting(32, "questions per point", label="Questions per point")
    task_options: dict = setting(help="the task's options (--mmlu-dir, --subjects, --shots, --split, --option)",
                                 factory=dict, cli=SHARED)
    heal_steps: int = setting(0, "LoRA healing steps per point, 0 for none (its other settings: heal's)",
                              label="Healing steps per point (0 = none)")
    repair: str = setting("none", "linear: also measure each point after a linear repair (a fitted map folded in, "
                          "no training; one fit a point)", choices=REPAIRS, label="Linear repair per point")
    repair_samples: int = setting(64, "calibration documents for each point's linear repair", label="Repair samples")
    text: str = setting("embedded", "text for the heatmap, the held-out loss and healing: 'embedded', 'c4' or a "
                        ".txt/.jsonl/.parquet file", flag="--text-file", label="Text for heatmap, held-out loss and healing")
    val_samples: int = setting(16, "held-out documents for the loss", label="Held-out samples")
    sim_samples: int = setting(32, "calibration samples for the heatmap", flag="--samples", label="Heatmap samples")
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
        from explorer.tasks import check_limit, get_task

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
        check_limit(self.limit)
        check_settings(self.val_samples, self.seq_len, self.batch_size)
        check_settings(self.sim_samples, self.seq_len, self.batch_size)
        get_task(self.task, **self.task_options)  # unknown task or options fail here
        next(iter(split_documents(self.text, "train")), None)  # a missing text file fails here

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


WIDGETS = {  # the Sweep page's widget key -> SweepSettings field
    "sw_strategies": "strategies", "sw_stride": "stride", "sw_task": "task", "sw_limit": "limit",
    "sw_heal": "heal_steps", "sw_text": "text", "sw_val": "val_samples", "sw_sim": "sim_samples",
    "sw_seq": "seq_len", "sw_batch": "batch_size", "sw_repair": "repair",
}
MODES = ["Every n with a stride", "Chosen fractions"]  # the page's choice of block sizes
LABELS = {key: widget(SweepSettings, name) for key, name in {**WIDGETS, "sw_fractions": "fractions"}.items()}  # label, help


def widget_values(settings: SweepSettings) -> dict:
    """The Sweep page's widget values for these settings, so the form shows a preset or saved sweep."""
    values = {key: getattr(settings, name) for key, name in WIDGETS.items()}
    values["sw_strategies"] = list(settings.strategies)
    if settings.fractions is not None:
        return {**values, "sw_mode": MODES[1], "sw_fractions": ", ".join(f"{f:g}" for f in settings.fractions)}
    return {**values, "sw_mode": MODES[0], "sw_fractions": "0, 0.1, 0.2, 0.3, 0.4, 0.5"}


def parse_fractions(text: str) -> tuple[float, ...]:
    """'0, 0.1, 0.25' -> (0.0, 0.1, 0.25); the range is checked by SweepSettings.check."""
    try:
        return tuple(float(item) for item in text.replace(";", ",").split(",") if item.strip())
    except ValueError as exc:
        raise ExplorerError(f"Fractions must be comma-separated numbers such as 0, 0.1, 0.25 (got '{text}').") from exc


def cached_heatmap(loaded: LoadedModel, settings: SweepSettings, store):
    """The finished similarity run the sweep's "similarity" strategy would reuse, or None
    (then the sweep computes it first)."""
    from explorer.data import make_samples
    from explorer.similarity import distances_key

    data = make_samples(loaded.tokenizer, settings.text, settings.sim_samples, settings.seq_len)
    return store.find_done("similarity", distances_key(loaded, data.fingerprint))


def point_repair(point: dict) -> str:
    """'none', 'linear' or 'lora'; a point stored before repair was an axis has only "healed"."""
    return point.get("repair") or ("lora" if point.get("healed") else "none")


def point_key(point: dict) -> Key:
    return point["strategy"], int(point["n"]), point_repair(point)


def curve_name(strategy: str, repair: str) -> str:
    """'similarity', 'similarity healed' (LoRA) or 'similarity linear' (linear repair)."""
    return {"none": strategy, "lora": f"{strategy} healed"}.get(repair, f"{strategy} {repair}")


def describe_point(point: dict) -> str:
    """One line per point, e.g. 'simple n=6 (20%): accuracy 0.50 [0.22, 0.78], loss 4.357 ± 0.040 (normalized
    0.081), same answer as the unpruned model on 62% [50%, 73%]'."""
    from explorer.agreement import describe

    normalized = point.get("normalized_loss")
    return (
        f"{curve_name(point['strategy'], point_repair(point))} n={point['n']} ({point['fraction']:.0%}): "
        f"accuracy {point['accuracy']:.2f} [{point['ci_low']:.2f}, {point['ci_high']:.2f}], loss {point['val_loss']:.3f}"
        + (f" ± {point['val_loss_se']:.3f}" if point.get("val_loss_se") is not None else "")
        + (f" (normalized {normalized:.3f})" if normalized is not None else "")
        + describe(point)
    )


def first_at_chance(points: list[dict], strategy: str, repair: str = "none") -> dict | None:
    """The smallest-n point of a curve whose 95% interval reaches chance (contains it or lies below):
    where accuracy has fallen to random guessing."""
    curve = sorted((p for p in points if p["strategy"] == strategy and point_repair(p) == repair), key=lambda p: p["n"])
    return next((p for p in curve if p["ci_low"] <= p["chance"]), None)


def summary(points: list[dict]) -> dict:
    """The run's result: points and, per curve, the fraction where accuracy first reaches chance."""
    chance = {}
    for strategy, repair in sorted({(p["strategy"], point_repair(p)) for p in points}):
        hit = first_at_chance(points, strategy, repair)
        chance[curve_name(strategy, repair)] = hit["fraction"] if hit else None
    return {"points": sorted(points, key=lambda p: (p["strategy"], p["healed"], point_repair(p), p["n"])),
            "first_at_chance": chance}


def sweep_points(store, run_id: int) -> list[dict]:
    """The point events of a sweep run (what the page plots while it runs)."""
    return [e for e in store.events(run_id) if e.get("kind") == "point"]


def _reusable_points(store, run_id: int, settings: SweepSettings, fingerprint: str) -> dict[Key, dict]:
    """Points of this run and of every sweep run with the same settings, for the same weights."""
    wanted = settings.to_json()
    found: dict[Key, dict] = {}
    for run in store.list_runs(kind="sweep"):
        if run.id != run_id and SweepSettings.from_json(run.settings).to_json() != wanted:
            continue
        for point in sweep_points(store, run.id):
            if point.get("fingerprint") == fingerprint:
                found.setdefault(point_key(point), {**point, "run_id": run.id})
    return found


def _normalized(loss: float, base_loss: float, vocab_size: int) -> float | None:
    """evaluate.normalized_loss, or None when the unpruned model is no better than uniform guessing
    (a random-weight model): the scale is undefined then, but accuracy and raw loss still are."""
    from explorer.evaluate import normalized_loss

    return normalized_loss(loss, base_loss, vocab_size) if base_loss < math.log(vocab_size) else None


def _normalized_se(se: float | None, base_loss: float, vocab_size: int) -> float | None:
    """The loss's standard error on the normalized scale (the same affine map, without the shift)."""
    return se / (math.log(vocab_size) - base_loss) if se is not None and base_loss < math.log(vocab_size) else None


def _phase(store, run_id: int, on_event: OnEvent, text: str) -> None:
    """A progress line, stored (the page shows the latest) and passed on (the CLI prints it)."""
    event = {"kind": "phase", "phase": text}
    store.add_event(run_id, event)
    on_event(event)


def eval_config(settings: SweepSettings):
    """Healing and evaluation settings: the sweep's task, limit and held-out text; evaluations
    only before and after healing (eval_every = steps)."""
    from explorer.heal import HealConfig

    steps = max(1, settings.heal_steps)
    return HealConfig(
        steps=steps, eval_every=steps, source=settings.text, seq_len=settings.seq_len,
        eval_task=settings.task, eval_limit=settings.limit, eval_options=dict(settings.task_options),
        val_samples=settings.val_samples, eval_batch_size=settings.batch_size,
    )


def linear_applies(settings: SweepSettings, block: Block) -> bool:
    """Whether the sweep measures this block after a linear repair: asked for, and a kept layer
    before the block to fold the map into (n = 0 removes nothing: its point is the unpruned one)."""
    return settings.repair == "linear" and not (block.n and block.start == 0)


@dataclass
class Shared:
    """What a local sweep without healing computes once for all its blocks: the unpruned model's
    recorded evaluation (`reuse.PrefixReuse`) and the linear fits, from one forward pass over the
    calibration text (`repair.fit_blocks`), keyed by (start, n)."""

    recording: object  # explorer.reuse.PrefixReuse
    fits: dict[tuple[int, int], object]  # explorer.repair.LinearFit


def repair_config(settings: SweepSettings):
    """The RepairConfig of a sweep's linear repairs."""
    from explorer.repair import RepairConfig

    return RepairConfig(source=settings.text, samples=settings.repair_samples, seq_len=settings.seq_len,
                        batch_size=settings.batch_size)


def measure_block(
    loaded: LoadedModel, block: Block, settings: SweepSettings, should_stop: Callable[[], bool],
    shared: Shared | None = None, timings: dict[str, float] | None = None,
) -> dict[str, dict]:
    """Metrics by repair: the pruned copy ("none"), the healed copy ("lora") when healing, and the
    linearly repaired copy ("linear") when `linear_applies`. With healing, the heal run's own
    evaluations (step 0 = pruned, merged = healed) are the points: healing changes weights, so a
    healed point never reuses the unpruned forward. Without it, `shared` (see `Shared`) runs only
    the layers after the block, and for a linear repair the layers from the one its map folds into."""
    from explorer.evaluate import quick_eval
    from explorer.heal import heal

    config = eval_config(settings)
    measured: dict[str, dict] = {}
    if settings.heal_steps:
        healed = heal(pruned_view(loaded, block), config, should_stop=should_stop)
        measured.update(none=healed.after_pruning, lora=healed.after_healing)
    elif shared is not None:
        measured["none"] = shared.recording.measure(block)
    else:
        measured["none"] = quick_eval(pruned_view(loaded, block), config, timings)
    if linear_applies(settings, block):
        measured["linear"] = measure_linear(loaded, block, settings, shared, timings) if block.n else measured["none"]
    return measured


def measure_locally(
    loaded: LoadedModel,
    blocks: list[Block],
    settings: SweepSettings,
    should_stop: Callable[[], bool],
    reuse: bool = True,
    timings: dict[str, float] | None = None,
) -> Iterator[Measured]:
    """The local executor: one block after another in this process, in the order given. Without
    healing and with `reuse`, the unpruned model's evaluation is recorded and the linear fits made
    once (`Shared`, before the first block), and every block runs only the layers after it;
    `reuse=False` measures each pruned model whole and fits each block alone (the same numbers,
    slower). `timings` accumulates seconds per part of the work (`profile_parts`)."""
    from explorer.repair import fit_blocks
    from explorer.reuse import PrefixReuse

    shared: Shared | None = None
    for block in blocks:
        if should_stop():
            return
        started = time.perf_counter()
        if reuse and not settings.heal_steps and shared is None:
            before = dict(timings or {})
            linear = [b for b in blocks if b.n and linear_applies(settings, b)]
            recording = PrefixReuse(loaded, {b.start for b in blocks} | {b.start - 1 for b in linear},
                                    _timed_eval(eval_config(settings), timings))
            _lap(timings, "recording", started)
            if timings is not None:  # the recording's own loss and scoring count as recording
                timings.update({part: before.get(part, 0.0) for part in ("loss", "scoring")})
            fitting = time.perf_counter()
            shared = Shared(recording, {(b.start, b.n): fit for b, fit in zip(linear, fit_blocks(loaded, linear, repair_config(settings)))})
            for part in ("fit", "evaluation"):  # the fits are evaluation work, as when each block fits its own
                _lap(timings, part, fitting)
        measuring = time.perf_counter()
        measured = measure_block(loaded, block, settings, should_stop, shared, timings)
        _lap(timings, "evaluation", measuring)
        yield block, measured, time.perf_counter() - started


def measure_linear(loaded: LoadedModel, block: Block, settings: SweepSettings, shared: Shared | None = None,
                   timings: dict[str, float] | None = None) -> dict:
    """Metrics of the pruned view after a linear repair, with the fit's held-out residual. The map
    folds into a private copy of one down-projection, so the shared weights stay untouched; with
    `shared`, the fit is the one made with all the others and the layers below the one it folds
    into replay the unpruned recording."""
    from explorer.evaluate import quick_eval
    from explorer.repair import fit_block, fold_private

    if shared is not None:
        fit = shared.fits[(block.start, block.n)]
    else:
        fitting = time.perf_counter()
        fit = fit_block(loaded, block, repair_config(settings))
        _lap(timings, "fit", fitting)

    def fold(view: LoadedModel) -> None:
        fold_private(view.model, fit.layer, fit.transform)

    if shared is not None:
        metrics = shared.recording.measure(block, prepare=fold, changed=fit.layer)
    else:
        repaired = pruned_view(loaded, block)
        fold(repaired)
        metrics = quick_eval(repaired, eval_config(settings), timings)
    return {**metrics, "heldout_residual": fit.heldout_residual}


def run_sweep(
    loaded: LoadedModel,
    settings: SweepSettings,
    store,
    run_id: int,
    on_event: OnEvent = lambda event: None,
    should_stop: Callable[[], bool] = lambda: False,
    executor: Executor | None = None,
    reuse: bool = True,
    timings: dict[str, float] | None = None,
) -> dict:
    """Measure every (strategy, n, repair) point not already finished, as events of `run_id`.

    Blocks go to the executor in order of n, all strategies at each n, so with the local executor
    every curve grows together; points are recorded as their block is measured (in any order with
    a parallel executor; those measured before the unpruned baseline wait for it, which their
    normalized loss and agreement need). The local executor (the default) takes `reuse` and
    `timings` (see `measure_locally`)."""
    from explorer.agreement import agreement
    from explorer.cache import cached_distances

    settings.check()
    num_layers = loaded.num_layers
    sizes = settings.block_sizes(num_layers)
    done = _reusable_points(store, run_id, settings, loaded.fingerprint)
    for key, point in sorted(done.items()):
        if point.pop("run_id") != run_id:  # resumed from an earlier run: copy it into this one, timed anew
            store.add_event(run_id, {**{k: v for k, v in point.items() if k != "time"}, "resumed": True})
    if done:
        _phase(store, run_id, on_event, f"resuming: {len(done)} points already measured")
    similarity = None
    if "similarity" in settings.strategies and max(sizes) > 0:
        if not cached_heatmap(loaded, settings, store):
            _phase(store, run_id, on_event, "no similarity heatmap cached for these settings: computing it first")
        sim_id, similarity, _ = cached_distances(
            loaded, settings.text, settings.sim_samples, settings.seq_len, settings.batch_size, store
        )
        _phase(store, run_id, on_event, f"using the similarity heatmap of run {sim_id}")
    repairs = [r for r in REPAIR_AXIS if r == "none" or r == settings.repair or (r == "lora" and settings.heal_steps)]
    total = len(sizes) * len(settings.strategies) * len(repairs)
    store.add_event(run_id, {"kind": "plan", "points": total, "sizes": sizes, "num_layers": num_layers})
    _phase(store, run_id, on_event, f"measuring {total - len(done)} points")
    vocab = loaded.model.get_output_embeddings().weight.shape[0]
    base_loss = next((p["val_loss"] for (_, n, repair), p in done.items() if n == 0 and repair == "none"), None)
    unpruned = next((p.get("predictions") for (_, n, repair), p in done.items() if n == 0 and repair == "none"), None)
    wanted: dict[tuple[int, int], list[Key]] = {}  # block (start, n) -> the missing points it gives
    blocks: dict[tuple[int, int], Block] = {}
    for n in sizes:
        for strategy in settings.strategies:
            block = strategy_block(strategy, n, num_layers, similarity)
            for repair in repairs:
                if (strategy, n, repair) in done:
                    continue
                if repair == "linear" and not linear_applies(settings, block):
                    _phase(store, run_id, on_event, f"{strategy} n={n}: no linear repair for a block at layer 0 (no kept layer before it)")
                    continue
                blocks.setdefault((block.start, block.n), block)
                wanted.setdefault((block.start, block.n), []).append((strategy, n, repair))
    waiting: list[dict] = []  # measured, waiting for the baseline loss
    cancelled = "The sweep was cancelled; {} points are saved and a restart resumes."
    executor = executor or functools.partial(measure_locally, reuse=reuse, timings=timings)
    for block, measured, seconds in executor(loaded, list(blocks.values()), settings, should_stop):
        bookkeeping = time.perf_counter()
        for index, (strategy, n, repair) in enumerate(wanted.pop((block.start, block.n))):
            if index and should_stop():  # asked once per point: the executor asked before the block's first
                raise SweepCancelled(cancelled.format(len(done)))
            metrics = {k: v for k, v in measured[repair].items() if k not in ("kind", "step", "merged")}
            waiting.append({
                "kind": "point", "strategy": strategy, "n": n, "fraction": n / num_layers, "healed": repair == "lora",
                "repair": repair, "start": block.start, "num_layers": num_layers, **metrics,
                "seconds": seconds if index == 0 else 0.0, "shared": index > 0,
                "fingerprint": loaded.fingerprint,
            })
            if base_loss is None and (baseline := next((p for p in waiting if p["n"] == 0 and p["repair"] == "none"), None)):
                base_loss, unpruned = baseline["val_loss"], baseline.get("predictions")
            for point in waiting if base_loss is not None else []:
                point.update(agreement(point.get("predictions"), unpruned))
                point["normalized_loss"] = _normalized(point["val_loss"], base_loss, vocab)
                point["normalized_loss_se"] = _normalized_se(point.get("val_loss_se"), base_loss, vocab)
                store.add_event(run_id, point)
                done[point_key(point)] = point
                on_event(point)
            waiting = waiting if base_loss is None else []
        _lap(timings, "bookkeeping", bookkeeping)
    if wanted:
        raise SweepCancelled(cancelled.format(len(done)))
    return summary(sweep_points(store, run_id))


def start_sweep(store, settings: SweepSettings, model_name: str | None = None, executor: dict | None = None) -> int:
    """A new queued-or-running sweep run row for these settings (the job or CLI then runs it).
    `executor` ({"executor": "ray", "ray_address": ...}) is kept beside the settings; it does not
    change the points, so sweeps on either executor resume each other."""
    return store.create_run("sweep", model_name or settings.model, {**settings.to_json(), **(executor or {})})


def _timed_eval(config, timings: dict[str, float] | None) -> Callable[[LoadedModel], dict]:
    """The sweep's evaluation of one model (evaluate.quick_eval), timing its loss and scoring."""
    from explorer.evaluate import quick_eval

    return lambda model: quick_eval(model, config, timings)


def _lap(timings: dict[str, float] | None, part: str, since: float) -> None:
    if timings is not None:
        timings[part] = timings.get(part, 0.0) + time.perf_counter() - since


def profile_parts(timings: dict[str, float]) -> dict[str, float]:
    """Seconds of the points' work by part: recording the unpruned evaluation (once per sweep),
    model preparation (pruned view and replay set-up: the evaluation minus its loss and
    scoring and the fits), held-out loss, task scoring, linear-repair fits, and bookkeeping (store
    writes, events)."""
    loss, scoring, fit = timings.get("loss", 0.0), timings.get("scoring", 0.0), timings.get("fit", 0.0)
    return {
        "recording": timings.get("recording", 0.0),
        "preparation": max(0.0, timings.get("evaluation", 0.0) - loss - scoring - fit),
        "loss": loss,
        "scoring": scoring,
        "fit": fit,
        "bookkeeping": timings.get("bookkeeping", 0.0),
    }


def load_for_sweep(settings: SweepSettings) -> LoadedModel:
    """The one model load of a sweep: device, device_map ("auto" across devices) and 4-bit as set."""
    return load_model(
        settings.model, device=settings.device, load_in_4bit=settings.load_in_4bit,
        trust_remote_code=settings.trust_remote_code, device_map=settings.device_map,
    )


def execute(store, run_id: int, on_event: OnEvent = lambda event: None, should_stop: Callable[[], bool] = lambda: False) -> dict:
    """Load the model once and run the sweep stored as `run_id`; returns its result.

    The caller runs it inside Store.running (jobs.run_job for the page, the CLI in the foreground),
    which records the outcome: a failure or cancellation raises, and the points so far stay."""
    stored = store.get_run(run_id).settings
    settings = SweepSettings.from_json(stored)
    settings.check()
    executor = None  # measure_locally
    if stored.get("executor", "local") == "ray":
        from explorer.distributed import RayExecutor

        executor = RayExecutor(stored.get("ray_address"))
    _phase(store, run_id, on_event, "loading the model")
    return run_sweep(load_for_sweep(settings), settings, store, run_id, on_event, should_stop, executor)

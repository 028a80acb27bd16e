"""Measuring one block of a sweep: the pruned model, and after a linear repair or a LoRA heal; the
local executor (one block after another, reusing the unpruned forward and sharing the linear
fits); and the profile of where the points' time goes."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterator

from explorer.lm.blocks import LayerSet
from explorer.evaluation.evaluate import Evaluated, quick_eval
from explorer.lm.models import LoadedModel, load_model
from explorer.lm.layers import pruned_view
from explorer.experiments.sweep.settings import SweepSettings
from explorer.surgery.heal import heal, HealConfig
from explorer.surgery.repair import fit_block, fit_blocks, fold_private, RepairConfig
from explorer.surgery.reuse import PrefixReuse

Measured = tuple[LayerSet, dict[str, dict], float]  # a block, measure_block's metrics by repair, seconds it took


# An executor measures blocks (measure_block on each) and yields them as they finish, in any order;
# it stops early, yielding no more, once should_stop() turns true. Local: measure_locally; Ray: explorer.experiments.sweep.distributed.
Executor = Callable[[LoadedModel, list[LayerSet], "SweepSettings", Callable[[], bool]], Iterator[Measured]]


def eval_config(settings: SweepSettings):
    """A healed point's settings: the sweep's evaluation (task, limit, held-out text), evaluated
    only before and after healing (eval_every = steps)."""
    steps = max(1, settings.heal_steps)
    return HealConfig(
        steps=steps, eval_every=steps, source=settings.text, seq_len=settings.seq_len,
        eval_task=settings.task, eval_limit=settings.limit, eval_options=dict(settings.task_options),
        val_samples=settings.val_samples, eval_batch_size=settings.batch_size,
    )


def linear_applies(settings: SweepSettings, block: LayerSet) -> bool:
    """Whether the sweep measures this set after a linear repair: asked for, one contiguous block
    (the map stands in for one run of layers), and a kept layer before it to fold the map into
    (n = 0 removes nothing: its point is the unpruned one)."""
    return settings.repair == "linear" and block.contiguous and not (block.n and block.start == 0)


@dataclass
class Shared:
    """What a local sweep without healing computes once for all its blocks: the unpruned model's
    recorded evaluation (`reuse.PrefixReuse`) and the linear fits, from one forward pass over the
    calibration text (`repair.fit_blocks`), keyed by (start, n)."""

    recording: object  # explorer.surgery.reuse.PrefixReuse
    fits: dict[tuple[int, int], object]  # explorer.surgery.repair.LinearFit


def repair_config(settings: SweepSettings):
    """The RepairConfig of a sweep's linear repairs."""
    return RepairConfig(source=settings.text, samples=settings.repair_samples, seq_len=settings.seq_len,
                        batch_size=settings.batch_size)


def measure_block(
    loaded: LoadedModel, block: LayerSet, settings: SweepSettings, should_stop: Callable[[], bool],
    shared: Shared | None = None, timings: dict[str, float] | None = None,
) -> dict[str, dict]:
    """Metrics by repair: the pruned copy ("none"), the healed copy ("lora") when healing, and the
    linearly repaired copy ("linear") when `linear_applies`. With healing, the heal run's own
    evaluations (step 0 = pruned, merged = healed) are the points: healing changes weights, so a
    healed point never reuses the unpruned forward. Without it, `shared` (see `Shared`) runs only
    the layers after the block, and for a linear repair the layers from the one its map folds into."""
    measured: dict[str, dict] = {}
    if settings.heal_steps:
        healed = heal(pruned_view(loaded, block), eval_config(settings), should_stop=should_stop)
        measured.update(none=healed.after_pruning, lora=healed.after_healing)
    else:
        measured["none"] = _evaluate_view(loaded, block, settings, shared, timings)
    if linear_applies(settings, block):
        measured["linear"] = measure_linear(loaded, block, settings, shared, timings) if block.n else measured["none"]
    return measured


def measure_locally(
    loaded: LoadedModel,
    blocks: list[LayerSet],
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
    shared: Shared | None = None
    for block in blocks:
        if should_stop():
            return
        started = time.perf_counter()
        if reuse and not settings.heal_steps and shared is None:
            before = dict(timings or {})
            linear = [b for b in blocks if b.n and linear_applies(settings, b)]
            recording = PrefixReuse(loaded, {b.start for b in blocks} | {b.start - 1 for b in linear},
                                    _timed_eval(settings, timings))
            lap(timings, "recording", started)
            if timings is not None:  # the recording's own loss and scoring count as recording
                timings.update({part: before.get(part, 0.0) for part in ("loss", "scoring")})
            fitting = time.perf_counter()
            shared = Shared(recording, {(b.start, b.n): fit for b, fit in zip(linear, fit_blocks(loaded, [b.as_block() for b in linear], repair_config(settings)))})
            for part in ("fit", "evaluation"):  # the fits are evaluation work, as when each block fits its own
                lap(timings, part, fitting)
        measuring = time.perf_counter()
        measured = measure_block(loaded, block, settings, should_stop, shared, timings)
        lap(timings, "evaluation", measuring)
        yield block, measured, time.perf_counter() - started


def measure_linear(loaded: LoadedModel, block: LayerSet, settings: SweepSettings, shared: Shared | None = None,
                   timings: dict[str, float] | None = None) -> dict:
    """Metrics of the pruned view after a linear repair, with the fit's held-out residual. The map
    folds into a private copy of one down-projection, so the shared weights stay untouched; with
    `shared`, the fit is the one made with all the others and the layers below the one it folds
    into replay the unpruned recording."""
    if shared is not None:
        fit = shared.fits[(block.start, block.n)]
    else:
        fitting = time.perf_counter()
        fit = fit_block(loaded, block.as_block(), repair_config(settings))
        lap(timings, "fit", fitting)

    def fold(view: LoadedModel) -> None:
        fold_private(view.model, fit.layer, fit.transform)

    metrics = _evaluate_view(loaded, block, settings, shared, timings, prepare=fold, changed=fit.layer)
    return {**metrics, "heldout_residual": fit.heldout_residual}


def _evaluate_view(
    loaded: LoadedModel, block: LayerSet, settings: SweepSettings, shared: Shared | None, timings: dict[str, float] | None,
    prepare: Callable[[LoadedModel], None] | None = None, changed: int | None = None,
) -> dict:
    """The sweep's evaluation of the block's pruned view, edited by `prepare` (which changes no layer
    below `changed`): replaying the shared recording's layers below the block when there is one,
    else the whole view."""
    if shared is not None:
        return shared.recording.measure(block, prepare=prepare, changed=changed)
    view = pruned_view(loaded, block)
    if prepare is not None:
        prepare(view)
    return quick_eval(view, settings, timings)


def _timed_eval(config: Evaluated, timings: dict[str, float] | None) -> Callable[[LoadedModel], dict]:
    """The sweep's evaluation of one model (evaluate.quick_eval), timing its loss and scoring."""
    return lambda model: quick_eval(model, config, timings)


def lap(timings: dict[str, float] | None, part: str, since: float) -> None:
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

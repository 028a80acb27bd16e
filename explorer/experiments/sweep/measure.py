"""Measuring one block of a sweep: the pruned model, and after a linear repair or a LoRA heal; the
local executor (one block after another, reusing the unpruned forward and sharing the linear
fits); and the profile of where the points' time goes."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterator

from explorer.evaluation.degeneration import degeneration
from explorer.evaluation.evaluate import Evaluated, generation_metrics, quick_eval
from explorer.evaluation.speed import SpeedSettings, measure_speed
from explorer.experiments.sweep.settings import SweepSettings
from explorer.lm.blocks import Block, LayerSet
from explorer.lm.layers import pruned_view
from explorer.lm.models import LoadedModel, load_model
from explorer.surgery.heal import HealConfig, heal
from explorer.surgery.repair import RepairConfig, fit_block, fit_blocks, fold_private
from explorer.surgery.reuse import PrefixReuse

# What a sweep point's speed is timed with: short, batch 1 only (the decode case depth pruning helps most).
SWEEP_SPEED = SpeedSettings(prompt_tokens=32, new_tokens=16, batch_sizes=(1,), repeats=3)

Measured = tuple[LayerSet, dict[str, dict], float]  # a block, measure_block's metrics by repair, seconds it took


# An executor measures blocks (measure_block on each) and yields them as they finish, in any order;
# it stops early, yielding no more, once should_stop() turns true. Local: measure_locally; Ray: explorer.experiments.sweep.distributed.
Executor = Callable[[LoadedModel, list[LayerSet], "SweepSettings", Callable[[], bool]], Iterator[Measured]]


def eval_config(settings: SweepSettings):
    """A healed point's settings: the sweep's objective and evaluation (task, limit, held-out text),
    evaluated only before and after healing (eval_every = steps)."""
    steps = max(1, settings.heal_steps)
    return HealConfig(
        steps=steps, eval_every=steps, source=settings.text, seq_len=settings.seq_len, objective=settings.heal_objective,
        eval_task=settings.task, eval_limit=settings.limit, eval_options=dict(settings.task_options),
        val_samples=settings.val_samples, eval_batch_size=settings.batch_size, gen_task=settings.gen_task or None,
        gen_limit=settings.gen_limit,
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
    linearly repaired copy ("linear") when `linear_applies`. With healing (the unpruned `loaded`, whose
    weights the pruned view shares, is the teacher of a kl objective), the heal run's own
    evaluations (step 0 = pruned, merged = healed) are the points: healing changes weights, so a
    healed point never reuses the unpruned forward. Without it, `shared` (see `Shared`) runs only
    the layers after the block, and for a linear repair the layers from the one its map folds into."""
    measured: dict[str, dict] = {}
    if settings.heal_steps:
        view = pruned_view(loaded, block)
        healed = heal(view, eval_config(settings), should_stop=should_stop, teacher=loaded)  # its evaluations score the generation task
        measured.update(none={**healed.after_pruning, **free_text(view, settings, loaded, timings)},
                        lora={**healed.after_healing, **free_text(healed.healed, settings, loaded, timings)})
    else:
        measured["none"] = _evaluate_view(loaded, block, settings, shared, timings)
    if linear_applies(settings, block):
        measured["linear"] = measure_linear(loaded, block, settings, shared, timings) if block.n else measured["none"]
    if settings.speed:  # a repair or a merged heal changes weights, not layers: one speed for all of them
        timing = time.perf_counter()
        speed = measure_speedup(loaded, block)
        lap(timings, "speed", timing)
        for metrics in measured.values():
            metrics.update(speed)
    return measured


def measure_speedup(loaded: LoadedModel, block: Block) -> dict:
    """The block's measured decode speedup at batch 1 (explorer.evaluation.speed: unpruned and pruned
    timed interleaved here, outputs checked), its ideal L / (L - n) and the bound the unpruned model's
    fixed per-step costs (LM head, embeddings, Python) allow. n = 0 is the unpruned model itself: 1."""
    if not block.n:
        return {"speedup": 1.0, "ideal_speedup": 1.0, "speedup_bound": 1.0}
    result = measure_speed({"unpruned": loaded.model, "pruned": pruned_view(loaded, block).model}, SWEEP_SPEED)
    compared = result["comparisons"]["pruned"]
    return {"speedup": compared["decode"]["1"]["min"], "ideal_speedup": compared["ideal"],
            "speedup_bound": compared["bound_with_fixed_costs"]}


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
    metrics = shared.recording.measure(block, prepare=prepare, changed=changed) if shared is not None else None
    if metrics is not None and not settings.gen_task and not settings.continuations:
        return metrics
    view = pruned_view(loaded, block)
    if prepare is not None:
        prepare(view)
    if metrics is None:
        metrics = quick_eval(view, settings, timings, generative=False)
    return {**metrics, **generated(view, settings, loaded, timings)}


def generated(model: LoadedModel, settings: SweepSettings, reference: LoadedModel, timings: dict[str, float] | None) -> dict:
    """What a point's model writes: the generation task's accuracy (`evaluate.generation_metrics`)
    and the free continuations' measures (`free_text`). Run on the model itself, never through the
    unpruned recording: a pruned model's tokens differ, so its calls would not match."""
    started = time.perf_counter()
    found = generation_metrics(model, settings.evaluation()) if settings.gen_task else {}
    lap(timings, "generation", started)
    return {**found, **free_text(model, settings, reference, timings)}


def free_text(model: LoadedModel, settings: SweepSettings, reference: LoadedModel, timings: dict[str, float] | None) -> dict:
    """The degeneration measures of the point's free continuations of held-out text (none without
    `continuations`), with the unpruned `reference` scoring them, and the first three texts."""
    if (chosen := settings.degeneration()) is None:
        return {}
    started = time.perf_counter()
    found = degeneration(model, chosen, reference)
    lap(timings, "generation", started)
    return {"repetition_4": found["repetition_4"], "distinct_1": found["distinct_1"], "distinct_2": found["distinct_2"],
            "reference_logprob": found["reference_logprob"], "continuation_examples": found["continuations"][:3]}


def _timed_eval(config: Evaluated, timings: dict[str, float] | None) -> Callable[[LoadedModel], dict]:
    """The sweep's evaluation of one model (evaluate.quick_eval without generation: the recording
    replays the unpruned model's calls), timing its loss and scoring."""
    return lambda model: quick_eval(model, config, timings, generative=False)


def lap(timings: dict[str, float] | None, part: str, since: float) -> None:
    if timings is not None:
        timings[part] = timings.get(part, 0.0) + time.perf_counter() - since


def profile_parts(timings: dict[str, float]) -> dict[str, float]:
    """Seconds of the points' work by part: recording the unpruned evaluation (once per sweep),
    model preparation (pruned view and replay set-up: the evaluation minus its loss, scoring,
    generation, the fits and the speed timing), held-out loss, task scoring, generation (the
    generation task and the free continuations), linear-repair fits, speed timing
    (`SweepSettings.speed`), and bookkeeping (store writes, events)."""
    loss, scoring, fit, speed, generation = (timings.get(part, 0.0) for part in ("loss", "scoring", "fit", "speed", "generation"))
    return {
        "recording": timings.get("recording", 0.0),
        "preparation": max(0.0, timings.get("evaluation", 0.0) - loss - scoring - fit - speed - generation),
        "loss": loss,
        "scoring": scoring,
        "generation": generation,
        "fit": fit,
        "speed": speed,
        "bookkeeping": timings.get("bookkeeping", 0.0),
    }


def load_for_sweep(settings: SweepSettings) -> LoadedModel:
    """The one model load of a sweep: device, device_map ("auto" across devices) and 4-bit as set."""
    return load_model(
        settings.model, device=settings.device, load_in_4bit=settings.load_in_4bit,
        trust_remote_code=settings.trust_remote_code, device_map=settings.device_map,
    )

"""Running a sweep: every missing (strategy, n, repair) point measured by an executor and written
to the store as it arrives, resumed from any earlier run with the same settings."""

from __future__ import annotations

import functools
import time
from typing import Callable

from explorer.analysis.strategies import DISTANCES, choose_layers, needs_of
from explorer.core.errors import Cancelled
from explorer.evaluation.agreement import agreement
from explorer.experiments.sweep.distributed import RayExecutor
from explorer.experiments.sweep.measure import Executor, lap, linear_applies, load_for_sweep, measure_locally
from explorer.experiments.sweep.points import normalized, normalized_se, point_key, reusable_points, summary, sweep_points
from explorer.experiments.sweep.settings import REPAIR_AXIS, Key, SweepSettings
from explorer.lm.blocks import LayerSet
from explorer.lm.models import LoadedModel
from explorer.state.cache import distances_run, strategy_context

OnEvent = Callable[[dict], None]


class SweepCancelled(Cancelled):
    """The user stopped the sweep; its finished points stay and a restart resumes from them."""


def _phase(store, run_id: int, on_event: OnEvent, text: str) -> None:
    """A progress line, stored (the page shows the latest) and passed on (the CLI prints it)."""
    event = {"kind": "phase", "phase": text}
    store.add_event(run_id, event)
    on_event(event)


def _context(loaded: LoadedModel, settings: SweepSettings, store, run_id: int, on_event: OnEvent, pruning: bool):
    """What the sweep's strategies choose from, computed once (or fetched) on the sweep's text,
    with a phase line for each part (none when every point is the unpruned n = 0)."""
    strategies = settings.strategies if pruning else ()
    if DISTANCES in needs_of(strategies) and not distances_run(store, loaded, settings.text, settings.sim_samples, settings.seq_len):
        _phase(store, run_id, on_event, "no similarity heatmap cached for these settings: computing it first")
    return strategy_context(loaded, strategies, settings.text, settings.sim_samples, settings.seq_len, settings.batch_size,
                            store, lambda text: _phase(store, run_id, on_event, f"choosing layers: {text}"))


def _layers(block: LayerSet) -> dict:
    """What a point records of its set beyond start and n: every index, when it is not one block."""
    if block.contiguous:
        return {}
    return {"layers": list(block.removed), "attention": list(block.attention), "mlp": list(block.mlp)}


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
    settings.check()
    num_layers = loaded.num_layers
    sizes = settings.block_sizes(num_layers)
    done = reusable_points(store, run_id, settings, loaded.fingerprint)
    for key, point in sorted(done.items()):
        if point.pop("run_id") != run_id:  # resumed from an earlier run: copy it into this one, timed anew
            store.add_event(run_id, {**{k: v for k, v in point.items() if k != "time"}, "resumed": True})
    if done:
        _phase(store, run_id, on_event, f"resuming: {len(done)} points already measured")
    context = _context(loaded, settings, store, run_id, on_event, max(sizes) > 0)
    repairs = [r for r in REPAIR_AXIS if r == "none" or r == settings.repair or (r == "lora" and settings.heal_steps)]
    total = len(sizes) * len(settings.strategies) * len(repairs)
    store.add_event(run_id, {"kind": "plan", "points": total, "sizes": sizes, "num_layers": num_layers})
    _phase(store, run_id, on_event, f"measuring {total - len(done)} points")
    vocab = loaded.model.get_output_embeddings().weight.shape[0]
    base_loss = next((p["val_loss"] for (_, n, repair), p in done.items() if n == 0 and repair == "none"), None)
    unpruned = next((p.get("predictions") for (_, n, repair), p in done.items() if n == 0 and repair == "none"), None)
    wanted: dict[LayerSet, list[Key]] = {}  # layer set -> the missing points it gives (equal sets: one measurement)
    for n in sizes:
        for strategy in settings.strategies:
            block = choose_layers(strategy, n, context)
            for repair in repairs:
                if (strategy, n, repair) in done:
                    continue
                if repair == "linear" and not linear_applies(settings, block):
                    why = "a block at layer 0 (no kept layer before it)" if block.contiguous else "a set that is not one block"
                    _phase(store, run_id, on_event, f"{strategy} n={n}: no linear repair for {why}")
                    continue
                wanted.setdefault(block, []).append((strategy, n, repair))
    waiting: list[dict] = []  # measured, waiting for the baseline loss
    cancelled = "The sweep was cancelled; {} points are saved and a restart resumes."
    executor = executor or functools.partial(measure_locally, reuse=reuse, timings=timings)
    for block, measured, seconds in executor(loaded, list(wanted), settings, should_stop):
        bookkeeping = time.perf_counter()
        for index, (strategy, n, repair) in enumerate(wanted.pop(block)):
            if index and should_stop():  # asked once per point: the executor asked before the block's first
                raise SweepCancelled(cancelled.format(len(done)))
            metrics = {k: v for k, v in measured[repair].items() if k not in ("kind", "step", "merged")}
            waiting.append({
                "kind": "point", "strategy": strategy, "n": n, "fraction": n / num_layers, "healed": repair == "lora",
                "repair": repair, "start": block.start, "num_layers": num_layers, **_layers(block), **metrics,
                "seconds": seconds if index == 0 else 0.0, "shared": index > 0,
                "fingerprint": loaded.fingerprint,
            })
            if base_loss is None and (baseline := next((p for p in waiting if p["n"] == 0 and p["repair"] == "none"), None)):
                base_loss, unpruned = baseline["val_loss"], baseline.get("predictions")
            for point in waiting if base_loss is not None else []:
                point.update(agreement(point.get("predictions"), unpruned))
                point["normalized_loss"] = normalized(point["val_loss"], base_loss, vocab)
                point["normalized_loss_se"] = normalized_se(point.get("val_loss_se"), base_loss, vocab)
                store.add_event(run_id, point)
                done[point_key(point)] = point
                on_event(point)
            waiting = waiting if base_loss is None else []
        lap(timings, "bookkeeping", bookkeeping)
    if wanted:
        raise SweepCancelled(cancelled.format(len(done)))
    return summary(sweep_points(store, run_id))


def start_sweep(store, settings: SweepSettings, model_name: str | None = None, executor: dict | None = None) -> int:
    """A new queued-or-running sweep run row for these settings (the job or CLI then runs it).
    `executor` ({"executor": "ray", "ray_address": ...}) is kept beside the settings; it does not
    change the points, so sweeps on either executor resume each other."""
    return store.create_run("sweep", model_name or settings.model, {**settings.to_json(), **(executor or {})})


def execute(store, run_id: int, on_event: OnEvent = lambda event: None, should_stop: Callable[[], bool] = lambda: False) -> dict:
    """Load the model once and run the sweep stored as `run_id`; returns its result.

    The caller runs it inside Store.running (jobs.run_job for the page, the CLI in the foreground),
    which records the outcome: a failure or cancellation raises, and the points so far stay."""
    stored = store.get_run(run_id).settings
    settings = SweepSettings.from_json(stored)
    settings.check()
    executor = None  # measure_locally
    if stored.get("executor", "local") == "ray":
        executor = RayExecutor(stored.get("ray_address"))
    _phase(store, run_id, on_event, "loading the model")
    return run_sweep(load_for_sweep(settings), settings, store, run_id, on_event, should_stop, executor)

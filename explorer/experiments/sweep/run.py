"""Running a sweep: every missing (strategy, n, repair) point measured by an executor and written
to the store as it arrives, resumed from any earlier run with the same settings."""

from __future__ import annotations

import functools
import time
from typing import Callable

from explorer.analysis.strategies import strategy_block
from explorer.core.errors import Cancelled
from explorer.evaluation.agreement import agreement
from explorer.experiments.sweep.distributed import RayExecutor
from explorer.experiments.sweep.measure import Executor, lap, linear_applies, load_for_sweep, measure_locally
from explorer.experiments.sweep.points import normalized, normalized_se, point_key, reusable_points, summary, sweep_points
from explorer.experiments.sweep.settings import REPAIR_AXIS, Key, SweepSettings
from explorer.lm.blocks import Block
from explorer.lm.models import LoadedModel
from explorer.state.cache import cached_distances, distances_run

OnEvent = Callable[[dict], None]


class SweepCancelled(Cancelled):
    """The user stopped the sweep; its finished points stay and a restart resumes from them."""


def _phase(store, run_id: int, on_event: OnEvent, text: str) -> None:
    """A progress line, stored (the page shows the latest) and passed on (the CLI prints it)."""
    event = {"kind": "phase", "phase": text}
    store.add_event(run_id, event)
    on_event(event)


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
    similarity = None
    if "similarity" in settings.strategies and max(sizes) > 0:
        if not distances_run(store, loaded, settings.text, settings.sim_samples, settings.seq_len):
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

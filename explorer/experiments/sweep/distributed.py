"""Sweeps on Ray: the sweep's blocks measured in parallel by Ray actors, one model load each.

The driver (the sweep job or the CLI) plans the points, computes or reuses the heatmap and
writes every event to OUR store as results arrive, in whatever order they finish; the workers
only load the model and run `sweep.measure_block`, the same function the local executor runs,
so the points are the same. Each worker is an actor holding one GPU when the cluster has GPUs
(one CPU otherwise) and loading the model once, then measuring block after block.

Cancelling kills the actors: their outstanding blocks stop at once and free their GPUs/CPUs;
the points already recorded stay, and a restart resumes from them like a local sweep.

Ray is optional (requirements-distributed.txt): nothing imports this module unless a sweep
asks for the Ray executor, and `ray_available()` tells the page whether to offer it.
"""

from __future__ import annotations

import importlib.util
import time
from typing import Callable, Iterator

from explorer.core.errors import ExplorerError
from explorer.experiments.sweep.measure import load_for_sweep, measure_block
from explorer.experiments.sweep.settings import SweepSettings
from explorer.lm.blocks import LayerSet
from explorer.lm.models import LoadedModel

POLL_SECONDS = 0.5
# A local instance started for one sweep: no dashboard, loopback, and a small object store
# (points are a few numbers; the model never travels through it: each worker loads its own).
LOCAL_INSTANCE = {"include_dashboard": False, "object_store_memory": 200 * 2**20, "_node_ip_address": "127.0.0.1"}


def ray_available() -> bool:
    return importlib.util.find_spec("ray") is not None


def connect(address: str | None = None, **local) -> None:
    """Join the Ray cluster at `address`, or start a local instance (LOCAL_INSTANCE, plus `local`,
    e.g. num_cpus) when none is running in this process yet."""
    if not ray_available():
        raise ExplorerError("Ray is not installed: pip install -r requirements-distributed.txt, or use the local executor.")
    import ray  # deferred: Ray is optional (requirements-distributed.txt)

    if ray.is_initialized():
        return
    try:
        if address:
            ray.init(address=address, log_to_driver=False)
        else:  # the workers import explorer as installed in this environment (`pip install -e .`)
            ray.init(**{**LOCAL_INSTANCE, **local}, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise ExplorerError(f"Could not start or join {where} ({exc}); check the address or use the local executor.") from exc


class _Worker:
    """A Ray actor's body: the sweep's model, loaded once, measuring one block per call."""

    def __init__(self, settings_json: dict):
        self.settings = SweepSettings.from_json(settings_json)
        self.loaded = load_for_sweep(self.settings)

    def measure(self, block: LayerSet) -> tuple[dict, float, str]:
        started = time.perf_counter()
        measured = measure_block(self.loaded, block, self.settings, lambda: False)
        return measured, time.perf_counter() - started, self.loaded.fingerprint


def _resources() -> tuple[dict, int]:
    """Per-worker resources and how many workers the cluster fits: one GPU each when it has GPUs."""
    import ray  # deferred: Ray is optional (requirements-distributed.txt)

    total = ray.cluster_resources()
    if total.get("GPU", 0) >= 1:
        return {"num_gpus": 1, "num_cpus": 1}, int(total["GPU"])
    return {"num_cpus": 1}, max(1, int(total.get("CPU", 1)))


class RayExecutor:
    """A sweep executor (sweep.Executor) running measure_block on Ray actors."""

    def __init__(self, address: str | None = None, **local):
        self.address, self.local = address, local

    def __call__(
        self, loaded: LoadedModel, blocks: list[LayerSet], settings, should_stop: Callable[[], bool]
    ) -> Iterator[tuple[LayerSet, dict, float]]:
        if not blocks:
            return
        connect(self.address, **self.local)
        import ray  # deferred: Ray is optional (requirements-distributed.txt)

        resources, fits = _resources()
        worker = ray.remote(**resources)(_Worker)
        actors = [worker.remote(settings.to_json()) for _ in range(min(fits, len(blocks)))]
        queue, running = list(blocks), {}  # running: task -> (actor, block)
        try:
            while queue or running:
                busy = {actor for actor, _ in running.values()}
                for actor in actors:
                    if queue and actor not in busy:
                        block = queue.pop(0)
                        running[actor.measure.remote(block)] = (actor, block)
                ready, _ = ray.wait(list(running), num_returns=1, timeout=POLL_SECONDS)
                if should_stop():
                    return
                for task in ready:
                    _, block = running.pop(task)
                    measured, seconds, fingerprint = _result(task, block)
                    if fingerprint != loaded.fingerprint:
                        raise ExplorerError("A Ray worker loaded different weights than the sweep's model: "
                                            "give every node the same model files, or use the local executor.")
                    yield block, measured, seconds
        finally:  # done, failed or cancelled: the actors go, and with them any block still running
            for actor in actors:
                ray.kill(actor)


def _result(task, block: LayerSet) -> tuple[dict, float, str]:
    """A finished task's value; its failure as one ExplorerError sentence."""
    import ray  # deferred: Ray is optional (requirements-distributed.txt)
    from ray.exceptions import RayActorError, RayTaskError  # deferred: Ray is optional (requirements-distributed.txt)

    try:
        return ray.get(task)
    except RayTaskError as exc:
        if isinstance(exc.cause, ExplorerError):
            raise exc.cause from None
        raise ExplorerError(f"Measuring layers {block.span} failed on a Ray worker: "
                            f"{type(exc.cause).__name__}: {exc.cause}") from exc
    except RayActorError as exc:
        raise ExplorerError(f"A Ray worker died while measuring layers {block.span} "
                            "(out of memory?): use fewer workers per machine or the local executor.") from exc

"""The speed run behind the Prune page's panel (a background job) and the CLI's `speed`: load the model,
pick what it is compared with, measure them together (explorer.evaluation.speed), each phase an event.

What is compared: with a block to drop, the model and its pruned view (the pruned model that shares
the unpruned weights: what it runs is exactly what a saved pruned model runs); with a reference (a
pruned folder's source model, from its run.json), the reference and the model; otherwise the model
alone. The reference always comes first: the speedups are over it.
"""

from __future__ import annotations

from typing import Callable

from explorer.core.errors import ExplorerError
from explorer.evaluation.speed import SpeedSettings, measure_speed
from explorer.lm.models import LoadedModel, load_model
from explorer.state.store import Run, Store

OnEvent = Callable[[dict], None]


def speed_settings(model: dict, speed: SpeedSettings, drop: tuple[int, int] | None = None, reference: str | None = None) -> dict:
    """A speed run's stored settings. `model`: {source, device, load_in_4bit, trust_remote_code};
    `drop`: (start, n) of the block to remove; `reference`: the model to compare with instead."""
    if drop is not None and reference is not None:
        raise ExplorerError("Compare with a dropped block or with a reference model, not both.")
    return {"model": model, "drop": None if drop is None else {"start": drop[0], "n": drop[1]}, "reference": reference,
            "speed": speed.to_json()}


def compared_models(loaded: LoadedModel, drop: dict | None, reference: LoadedModel | None) -> dict[str, LoadedModel]:
    """The models to time, the reference first, by label."""
    if drop is not None:
        return {"unpruned": loaded, "pruned": loaded.pruned(drop["start"], drop["n"], allow_final=True)}
    if reference is not None:
        return {"reference": reference, "pruned": loaded}
    return {"model": loaded}


def execute(store: Store, run_id: int, on_event: OnEvent = lambda event: None,
            should_stop: Callable[[], bool] = lambda: False) -> dict:
    """Load, compare and measure the speed run stored as `run_id`; returns its result. The caller runs
    it inside Store.running (the job runner for the page, the CLI in the foreground)."""
    settings = store.get_run(run_id).settings
    speed = SpeedSettings.from_json(settings["speed"])
    speed.check()

    def phase(text: str) -> None:
        event = {"kind": "phase", "phase": text}
        store.add_event(run_id, event)
        on_event(event)

    model = settings["model"]
    options = {"device": model.get("device"), "trust_remote_code": model.get("trust_remote_code", False)}
    phase("loading the model")
    loaded = load_model(model["source"], load_in_4bit=model.get("load_in_4bit", False), **options)
    reference = None
    if settings.get("reference"):
        phase(f"loading the reference model {settings['reference']}")
        reference = load_model(settings["reference"], **options)
    models = compared_models(loaded, settings.get("drop"), reference)
    result = measure_speed({label: m.model for label, m in models.items()}, speed, phase, should_stop)
    return {**result, "names": {label: m.name for label, m in models.items()}}


def speed_job(store: Store, run: Run, should_stop: Callable[[], bool]) -> dict:
    """The background job's body (explorer.kinds registers it)."""
    return execute(store, run.id, should_stop=should_stop)

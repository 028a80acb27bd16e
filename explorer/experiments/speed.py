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
from explorer.lm.blocks import LayerSet, check_block, check_layer_set
from explorer.lm.layers import pruned_view
from explorer.lm.models import LoadedModel, load_model
from explorer.state.store import Run, Store

OnEvent = Callable[[dict], None]


def drop_record(layers: LayerSet) -> dict:
    """What a speed run drops, as its settings keep it: {start, n} for a block, else the removed layers
    and the skipped attention and MLP sub-layers (checked against the model when it loads)."""
    if layers.contiguous:
        return {"start": layers.start if layers.n else 0, "n": layers.n}
    return {"removed": list(layers.removed), "attention": list(layers.attention), "mlp": list(layers.mlp)}


def dropped_layers(drop: dict, num_layers: int) -> LayerSet:
    """The set a `drop_record` names, checked against the model (the final layer may go: it is timed, not judged)."""
    if "start" in drop:
        return check_block(drop["start"], drop["n"], num_layers, allow_final=True)
    return check_layer_set(drop["removed"], num_layers, True, drop["attention"], drop["mlp"])


def speed_settings(model: dict, speed: SpeedSettings, drop: dict | None = None, reference: str | None = None) -> dict:
    """A speed run's stored settings. `model`: {source, device, load_in_4bit, trust_remote_code};
    `drop`: a `drop_record` of what to remove; `reference`: the model to compare with instead."""
    if drop is not None and reference is not None:
        raise ExplorerError("Compare with a dropped block or with a reference model, not both.")
    return {"model": model, "drop": drop, "reference": reference, "speed": speed.to_json()}


def compared_models(loaded: LoadedModel, drop: dict | None, reference: LoadedModel | None) -> dict[str, LoadedModel]:
    """The models to time, the reference first, by label. A dropped set is a weight-sharing view in
    which removed layers are gone and skipped sub-layers compute nothing."""
    if drop is not None:
        return {"unpruned": loaded, "pruned": pruned_view(loaded, dropped_layers(drop, loaded.num_layers))}
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

"""The heal run behind the Prune & heal page's job and the CLI's `heal`: load, evaluate, prune (and
repair), heal and save, every event in the store; on several processes under accelerate when asked.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable

from explorer.core.errors import Cancelled, ExplorerError
from explorer.core.paths import CHECKOUT
from explorer.export.folder import heal_record, save_model
from explorer.lm.models import load_model
from explorer.state.cache import cached_quick_eval, cached_self_data
from explorer.state.files import log_path, run_folder
from explorer.state.store import Run, Store
from explorer.surgery.heal import HealConfig, prune_and_heal
from explorer.surgery.parallel import data_parallel, launch_command
from explorer.surgery.repair import RepairConfig

POLL_SECONDS = 1.0


def heal_job(store: Store, run: Run, should_stop: Callable[[], bool]) -> dict:
    """Load, evaluate, prune, heal and save, writing every event to the store (heal_run).

    settings: {"model": {source, device, load_in_4bit, trust_remote_code}, "start", "n",
    "allow_final", "heal": HealConfig fields, "processes": GPUs to train on (default 1), "save": bool
    (default False: a healed 135M model is hundreds of MB), "dtype": "fp32" | "bf16" | "fp16" of the
    saved weights (default: as loaded)}.
    With several processes the runner starts them (`heal_ranks` under accelerate) and waits."""
    if run.settings.get("processes", 1) > 1:
        return _heal_on_ranks(store, run, should_stop)
    return heal_run(store, run.id, run.settings, should_stop, run_folder(store, run.id))


def heal_ranks(store: Store, run_id: int) -> None:
    """One rank of a multi-process heal job (`python -m explorer heal-ranks`, started by
    _heal_on_ranks under accelerate): trains its share; the main rank writes the events and the
    model and stops every rank once the run is cancelled. A failure becomes an "error" event
    the runner reports."""
    run = store.get_run(run_id)
    ranks = data_parallel(run.settings["model"].get("device"))
    try:
        heal_run(store, run_id, run.settings, lambda: store.get_run(run_id).status == "cancelled", run_folder(store, run_id), ranks)
    except ExplorerError as exc:
        if ranks is None or ranks.is_main:
            store.add_event(run_id, {"kind": "error", "error": str(exc)})
        raise


def _heal_on_ranks(store: Store, run: Run, should_stop: Callable[[], bool]) -> dict:
    """Run the heal on `processes` ranks and return the main rank's record (from run.json)."""
    command = launch_command(run.settings["processes"], "heal-ranks", str(run.id), "--store", str(store.path))
    ranks = subprocess.Popen(command, cwd=CHECKOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    while ranks.poll() is None:
        if should_stop():  # the ranks see the cancelled status at their next step; wait for them, then make sure
            try:
                ranks.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(ranks.pid, signal.SIGKILL)
            raise Cancelled("Healing was cancelled.")
        time.sleep(POLL_SECONDS)
    if ranks.returncode != 0:
        errors = [e["error"] for e in store.events(run.id) if e.get("kind") == "error"]
        raise ExplorerError(errors[-1] if errors else f"The healing processes exited with code {ranks.returncode}: see {log_path(store, run.id)}.")
    folder = run_folder(store, run.id)
    record = json.loads((folder / "run.json").read_text())
    return {**{k: v for k, v in record.items() if k != "run_id"}, "folder": str(folder)}


def heal_run(
    store: Store,
    run_id: int | None,
    settings: dict,
    should_stop: Callable[[], bool],
    folder: Path | str,
    ranks=None,
    echo: Callable[[dict], None] = lambda event: None,
) -> dict:
    """The heal behind the job and the CLI: every event goes to run `run_id` in the store (and to
    `echo`), the merged model to `folder`; returns run.json's record plus the folder.

    With `ranks` (data-parallel under `accelerate launch`, explorer.surgery.parallel) every rank loads the
    model on its own device and trains its share; only the main process writes events, the
    model and run.json (which records the world size) and returns the record; others return {}."""

    model = settings["model"]
    main = ranks is None or ranks.is_main

    def on_event(event: dict) -> None:
        if main:
            store.add_event(run_id, event, step=event["step"])
            echo(event)

    on_event({"kind": "phase", "step": 0, "phase": "loading the model"})
    loaded = load_model(
        model["source"],
        device=str(ranks.device) if ranks is not None else model.get("device"),
        load_in_4bit=model.get("load_in_4bit", False),
        trust_remote_code=model.get("trust_remote_code", False),
    )
    config = HealConfig(**settings.get("heal", {}))
    repair = RepairConfig(**settings["repair"]) if settings.get("repair") else None  # linear repair before healing
    outcome = prune_and_heal(
        loaded, settings["start"], settings["n"], config, on_event, should_stop, settings.get("allow_final", False),
        lambda unpruned, resolved: cached_quick_eval(unpruned, resolved, store), ranks, repair,
        lambda unpruned, resolved: cached_self_data(unpruned, resolved, store),
    )
    if not main:
        return {}
    record = {**heal_record(outcome, model["source"], loaded.name), "world_size": ranks.size if ranks is not None else 1}
    if not (settings.get("save", False) or ranks is not None):  # several ranks hand their result over in run.json
        return record
    on_event({"kind": "phase", "step": config.steps, "phase": "saving"})
    saved = save_model(outcome.healed, folder, model["source"], outcome.block, {**record, "run_id": run_id}, settings.get("dtype"))
    return {**record, "folder": str(saved)}

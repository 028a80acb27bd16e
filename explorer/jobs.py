"""Background jobs: heavy runs (healing, sweeps) in their own process, all state in the store.

`submit` inserts a "queued" run and starts `python -m explorer job RUN_ID` detached from the
caller (its own session; output to logs/RUN_ID.log beside the store, i.e. EXPLORER_HOME), so
a Streamlit rerun, a browser reload or a closed tab neither stops nor loses it, and any page
or tab sees the same job because pages read only the store. The runner waits its turn (one
heavy job at a time per machine, FIFO by run id), records every step as an event, and ends
"done" (result: final metrics and the saved folder), "failed" (error: one line) or
"cancelled". A runner killed before it could record anything (SIGKILL, the OOM killer, a
reboot) is found by `reap`, which every listing calls, and marked failed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from explorer.errors import ExplorerError
from explorer.store import Run, Store

REPO = Path(__file__).resolve().parents[1]
ACTIVE = ("queued", "running")
POLL_SECONDS = 1.0
DIED = "process died"


def log_path(store: Store, run_id: int) -> Path:
    """logs/<id>.log beside the store (EXPLORER_HOME/logs for the default store)."""
    folder = store.path.parent / "logs"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{run_id}.log"


def run_folder(store: Store, run_id: int) -> Path:
    """Where a job saves its model: runs/<id>/ beside the store (EXPLORER_HOME/runs/<id>/ by
    default), so run ids, which are per store, never share a folder."""
    return store.path.parent / "runs" / str(run_id)


def submit(store: Store, kind: str, model_name: str, settings: dict) -> int:
    """Queue a job and start its runner process; returns the run id at once."""
    if kind not in JOBS:
        raise ExplorerError(f"Unknown job kind '{kind}': choose one of {', '.join(JOBS)}.")
    run_id = store.create_run(kind, model_name, settings, status="queued")
    command = [sys.executable, "-m", "explorer", "job", str(run_id), "--store", str(store.path)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    with open(log_path(store, run_id), "ab") as log:
        process = subprocess.Popen(
            command, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    store.update_run(run_id, pid=process.pid)
    return run_id


def is_alive(pid: int | None, run_id: int) -> bool:
    """Whether `pid` is still this run's runner: not exited, not a zombie, not a reused pid."""
    if not pid:
        return False
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:  # our own exited child: collect it
            return False
    except ChildProcessError:  # not our child (another server, a reload): ask the OS
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    proc = Path(f"/proc/{pid}")
    if not proc.is_dir():  # no procfs (macOS): the signal check is all we have
        return True
    try:
        if proc.joinpath("stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False
        args = proc.joinpath("cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"job" in args and str(run_id).encode() in args


def reap(store: Store) -> list[int]:
    """Mark queued/running jobs whose runner is gone as failed; returns their ids."""
    dead = []
    for status in ACTIVE:
        for run in store.list_runs(status=status):
            if run.kind in JOBS and run.pid and not is_alive(run.pid, run.id):
                current = store.get_run(run.id)  # it may have finished between the listing and now
                if current.status == status:
                    store.fail_run(run.id, DIED)
                    dead.append(run.id)
    return dead


def list_jobs(store: Store, kind: str | None = None) -> list[Run]:
    """Jobs newest first, after reaping dead ones so no listing shows a ghost 'running'."""
    reap(store)
    return [run for run in store.list_runs(kind=kind) if run.kind in JOBS]


def latest_job(store: Store, kind: str, model: str | None = None) -> Run | None:
    """The newest job of this kind (for this model): what a reloaded page reattaches to."""
    for run in list_jobs(store, kind):
        if model is None or run.model == model:
            return run
    return None


def cancel(store: Store, run_id: int) -> None:
    """Mark the run cancelled and signal its runner, which stops at its next step."""
    run = store.get_run(run_id)
    if run.status not in ACTIVE:
        return
    store.update_run(run_id, status="cancelled", error="cancelled by the user")
    if run.pid and is_alive(run.pid, run_id):
        try:
            os.kill(run.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass


class StopFlag:
    """The runner's should_stop: true after SIGTERM or once the store says "cancelled"."""

    def __init__(self, store: Store, run_id: int):
        self.store, self.run_id, self.signalled = store, run_id, False
        signal.signal(signal.SIGTERM, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        self.signalled = True

    def __call__(self) -> bool:
        return self.signalled or self.store.get_run(self.run_id).status == "cancelled"


def _my_turn(store: Store, run_id: int) -> bool:
    """No other job running (a cancelled runner counts until its process exits), and no older
    job still queued (FIFO)."""
    reap(store)
    others = [run for status in (*ACTIVE, "cancelled") for run in store.list_runs(status=status)
              if run.kind in JOBS and run.id != run_id and run.pid]  # pid: a job, not a foreground CLI run
    return not any(
        run.status == "running"
        or (run.status == "queued" and run.id < run_id)
        or (run.status == "cancelled" and is_alive(run.pid, run.id))
        for run in others
    )


def run_job(store: Store, run_id: int) -> None:
    """The body of `python -m explorer job RUN_ID`: wait, run, record the outcome."""
    stop = StopFlag(store, run_id)
    run = store.get_run(run_id)
    if run.kind not in JOBS:
        store.fail_run(run_id, f"unknown job kind '{run.kind}'")
        return
    store.update_run(run_id, pid=os.getpid())
    while not _my_turn(store, run_id):
        if stop():
            return
        time.sleep(POLL_SECONDS)
    if stop():
        return
    store.update_run(run_id, status="running")
    try:
        result = JOBS[run.kind](store, store.get_run(run_id), stop)
    except ExplorerError as exc:
        if not stop():
            store.fail_run(run_id, str(exc))
        return
    except BaseException as exc:
        store.fail_run(run_id, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'no message'}")
        raise  # the traceback goes to the job's log
    if not stop():
        store.finish_run(run_id, result)


def heal_job(store: Store, run: Run, should_stop: Callable[[], bool]) -> dict:
    """Load, evaluate, prune, heal and save, writing every event to the store.

    settings: {"model": {source, device, load_in_4bit, trust_remote_code}, "start", "n",
    "allow_final", "heal": HealConfig fields}."""
    from explorer.heal import HealConfig, outcome_record, prune_and_heal, save_healed
    from explorer.models import load_model

    settings = run.settings
    model = settings["model"]

    def on_event(event: dict) -> None:
        store.add_event(run.id, event["step"], event)

    on_event({"kind": "phase", "step": 0, "phase": "loading the model"})
    loaded = load_model(
        model["source"],
        device=model.get("device"),
        load_in_4bit=model.get("load_in_4bit", False),
        trust_remote_code=model.get("trust_remote_code", False),
    )
    config = HealConfig(**settings.get("heal", {}))
    outcome = prune_and_heal(
        loaded, settings["start"], settings["n"], config, on_event, should_stop, settings.get("allow_final", False), store
    )
    on_event({"kind": "phase", "step": config.steps, "phase": "saving"})
    record = outcome_record(outcome, model["source"], loaded.name)
    folder = save_healed(outcome, run_folder(store, run.id), model["source"], {**record, "run_id": run.id})
    return {**record, "folder": str(folder)}


def sweep_job(store: Store, run: Run, should_stop: Callable[[], bool]) -> dict:
    """explorer.sweep.execute, which records its own points, result and failures."""
    from explorer.sweep import execute

    return execute(store, run.id, should_stop=should_stop)


def classify_job(store: Store, run: Run, should_stop: Callable[[], bool]) -> dict:
    """explorer.finetune.execute: the accuracy-vs-k curve, one point event at a time."""
    from explorer.finetune import execute

    return execute(store, run.id, should_stop=should_stop)


# kind -> runner(store, run, should_stop) -> result; every kind here is a heavy job (one at a time).
JOBS: dict[str, Callable[[Store, Run, Callable[[], bool]], dict]] = {"heal": heal_job, "sweep": sweep_job, "classify": classify_job}

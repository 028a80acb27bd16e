"""Background jobs: heavy runs (healing, sweeps) in their own process, all state in the store.

`submit` inserts a "queued" run and starts `python -m explorer job RUN_ID` detached from the
caller (its own session; output to logs/RUN_ID.log beside the store, i.e. EXPLORER_HOME), so
a Streamlit rerun, a browser reload or a closed tab neither stops nor loses it, and any page
or tab sees the same job because pages read only the store. The runner waits its turn (one
heavy job at a time per machine, FIFO by run id), records every step as an event, and ends
"done" (result: final metrics and the saved folder), "failed" (error: one line) or
"cancelled". A runner killed before it could record anything (SIGKILL, the OOM killer, a
reboot) is found by `reap`, which every listing calls, and marked failed.

Only the visitor who started a job may cancel it from a page (`cancel_as`, explorer.core.policy:
the job's run records its owner, the session's visitor key); the operator cancels any run, at a
loopback server or with `python -m explorer cancel RUN_ID`.

Cancelling is immediate in every phase: `cancel` marks the run cancelled and sends SIGTERM, on
which the runner raises `JobCancelled` wherever it is (loading, evaluating, training, merging,
saving, between sweep points) and exits without recording anything; a runner still alive
after `GRACE_SECONDS` is killed. The runner runs the job inside `Store.running`, which records
the outcome only while the run is still "running", so a cancelled run never turns "done". The
process that started a runner waits for it in a daemon thread, so a finished runner never
lingers as a defunct (zombie) process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from explorer.core.errors import ExplorerError
from explorer.core.paths import CHECKOUT
from explorer.core.policy import Policy, check_cancel
from explorer.core.threads import configure
from explorer.kinds import KINDS, job_kinds
from explorer.state.files import log_path
from explorer.state.store import ACTIVE, Run, Store
from explorer.views.progress import current_phase

POLL_SECONDS = 1.0
GRACE_SECONDS = 5.0  # after SIGTERM, how long a runner may take to exit before SIGKILL
DIED = "process died"
CANCELLED = "cancelled by the user"
SIGTERMED = "stopped by SIGTERM"  # what a runner records when the signal did not come from cancel()


def submit(store: Store, kind: str, model_name: str, settings: dict, owner: str | None = None) -> int:
    """Queue a job and start its runner process; returns the run id at once. `owner`: the visitor
    key of the session starting it (only that session, or the operator, may cancel it)."""
    if kind not in job_kinds():
        raise ExplorerError(f"Unknown job kind '{kind}': choose one of {', '.join(job_kinds())}.")
    run_id = store.create_run(kind, model_name, settings, status="queued", owner=owner)
    command = [sys.executable, "-m", "explorer", "job", str(run_id), "--store", str(store.path)]
    with open(log_path(store, run_id), "ab") as log:  # `-m` from the checkout's root imports this checkout's explorer
        process = subprocess.Popen(
            command, cwd=CHECKOUT, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    store.update_run(run_id, pid=process.pid)
    threading.Thread(target=process.wait, name=f"wait-job-{run_id}", daemon=True).start()  # no zombie when it ends
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
            if run.kind in job_kinds() and run.pid and not is_alive(run.pid, run.id):
                if store.transition(run.id, status, status="failed", error=DIED):  # unless it ended meanwhile
                    dead.append(run.id)
    return dead


def list_jobs(store: Store, kind: str | None = None) -> list[Run]:
    """Jobs newest first, after reaping dead ones so no listing shows a ghost 'running'."""
    reap(store)
    return [run for run in store.list_runs(kind=kind) if run.kind in job_kinds()]


def cancel(store: Store, run_id: int, grace: float = GRACE_SECONDS, wait: bool = False) -> bool:
    """Mark the run cancelled and SIGTERM its runner, which exits at once; SIGKILL follows if it
    is still alive after `grace` seconds (from a daemon thread, or here with `wait`, for a caller
    that exits right after, like the CLI). Returns False when the run had already ended."""
    run = store.get_run(run_id)
    if not store.transition(run_id, ACTIVE, status="cancelled", error=CANCELLED):
        return False
    if run.pid and is_alive(run.pid, run_id):
        try:
            os.kill(run.pid, signal.SIGTERM)
        except ProcessLookupError:
            return True
        if wait:
            _kill_after(run.pid, run_id, grace)
        else:
            threading.Thread(target=_kill_after, args=(run.pid, run_id, grace), name=f"kill-job-{run_id}", daemon=True).start()
    return True


def cancel_as(store: Store, run_id: int, policy: Policy, visitor: str | None) -> bool:
    """`cancel` for a page: only the visitor who started the run, or the operator, may (a student
    never stops the teacher's demo); the rule is enforced here, whatever the page shows."""
    check_cancel(policy, store.get_run(run_id).owner, visitor)
    return cancel(store, run_id)


def _kill_after(pid: int, run_id: int, grace: float) -> None:
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not is_alive(pid, run_id):
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class JobCancelled(BaseException):
    """Raised in the runner by SIGTERM. A BaseException, like KeyboardInterrupt, so no library's
    `except Exception` swallows it and the work stops wherever it is."""


class StopFlag:
    """The runner's cancel switch: SIGTERM raises JobCancelled at once, except inside
    `critical()` (recording the outcome), where it is raised as the block ends. Calling it is
    the between-steps check: true once signalled or once the store says "cancelled"."""

    def __init__(self, store: Store, run_id: int):
        self.store, self.run_id, self.signalled, self.depth = store, run_id, False, 0
        signal.signal(signal.SIGTERM, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        self.signalled = True
        if not self.depth:
            raise JobCancelled(SIGTERMED)

    @contextmanager
    def critical(self) -> Iterator[None]:
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
        if self.signalled and not self.depth:
            raise JobCancelled(SIGTERMED)

    def __call__(self) -> bool:
        return self.signalled or self.store.get_run(self.run_id).status == "cancelled"


def blocker(store: Store, run_id: int) -> Run | None:
    """The job this one waits for: one running (a cancelled runner counts until its process
    exits), else the oldest job queued before it (FIFO); None when it is this job's turn."""
    reap(store)
    others = [run for status in (*ACTIVE, "cancelled") for run in store.list_runs(status=status)
              if run.kind in job_kinds() and run.id != run_id and run.pid]  # pid: a job, not a foreground CLI run
    running = [run for run in others if run.status == "running" or (run.status == "cancelled" and is_alive(run.pid, run.id))]
    queued = sorted((run for run in others if run.status == "queued" and run.id < run_id), key=lambda run: run.id)
    return (running or queued or [None])[0]


def queue_reason(store: Store, run_id: int) -> str:
    """What a queued job waits for, e.g. 'waiting for run #4 (heal, training)'."""
    ahead = blocker(store, run_id)
    if ahead is None:
        return "starting"
    doing = "stopping" if ahead.status == "cancelled" else current_phase(store.events(ahead.id)) or ahead.status
    return f"waiting for run #{ahead.id} ({ahead.kind}, {doing})"


def check_runnable(store: Store, run_id: int) -> Run:
    """The run `python -m explorer job RUN_ID` may start: a queued job nobody else runs.
    Anything else is refused in one sentence, changing nothing."""
    run = store.get_run(run_id)
    if run.kind not in job_kinds():
        raise ExplorerError(f"Run {run_id} is a {run.kind} run, not a background job ({', '.join(job_kinds())}); nothing was changed.")
    if run.status != "queued":
        raise ExplorerError(f"Run {run_id} is already {run.status}; only a queued job can be started, so nothing was "
                            "changed (start a new run instead).")
    if run.pid and run.pid != os.getpid() and is_alive(run.pid, run_id):
        raise ExplorerError(f"Run {run_id} already has a runner (process {run.pid}); nothing was changed.")
    return run


def run_job(store: Store, run_id: int) -> None:
    """The body of `python -m explorer job RUN_ID`: wait, then run the job inside `Store.running`,
    which records its outcome. Only a bug's traceback leaves (it goes to the job's log)."""
    run = check_runnable(store, run_id)
    configure("runner")
    stop = StopFlag(store, run_id)
    try:
        store.update_run(run_id, pid=os.getpid())
        while blocker(store, run_id) is not None:
            if stop():
                return
            time.sleep(POLL_SECONDS)
        with store.running(run_id, cancelled=(JobCancelled,), shield=stop.critical) as job:
            job.result = KINDS[run.kind].runner(store, store.get_run(run_id), stop)
    except (JobCancelled, ExplorerError):  # recorded (or, cancelled while queued, refused) by Store.running
        return

"""Where a run's files live beside its store: the job's log and its folder (a saved model, run.json).

Run ids are per store, so both sit under the store's own folder (EXPLORER_HOME for the default
store) and two stores never share a folder. The job runner writes them, the Runs page lists and
deletes them: one definition for both.
"""

from __future__ import annotations

from pathlib import Path

from explorer.state.store import Store


def log_path(store: Store, run_id: int) -> Path:
    """logs/<id>.log beside the store (EXPLORER_HOME/logs for the default store)."""
    folder = store.path.parent / "logs"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{run_id}.log"


def run_folder(store: Store, run_id: int) -> Path:
    """Where a job saves its model: runs/<id>/ beside the store (EXPLORER_HOME/runs/<id>/ by
    default), so run ids, which are per store, never share a folder."""
    return store.path.parent / "runs" / str(run_id)

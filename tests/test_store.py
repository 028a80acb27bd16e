"""The SQLite run store: migrations, persistence across processes/reopens, cache lookups,
cascading deletes, and clear errors for files it cannot read."""

from __future__ import annotations

import sqlite3
from contextlib import closing

import pytest

import explorer.store as store_module
from explorer.errors import ExplorerError
from explorer.store import MIGRATIONS, Store


def test_new_store_is_fully_migrated(store):
    assert store.schema_version == len(MIGRATIONS) >= 1
    with closing(sqlite3.connect(store.path)) as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert {"runs", "events"} <= tables
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_runs_survive_reopening(tmp_path):
    path = tmp_path / "runs.sqlite"
    first = Store(path)
    run_id = first.create_run("similarity", "model-a", {"samples": 4}, cache_key="k1")
    first.add_event(run_id, 1, {"loss": 2.5})
    first.finish_run(run_id, {"distances": [[0.1, 0.2]]})
    again = Store(path)
    run = again.get_run(run_id)
    assert (run.kind, run.model, run.status, run.cache_key) == ("similarity", "model-a", "done", "k1")
    assert run.settings == {"samples": 4} and run.result == {"distances": [[0.1, 0.2]]}
    assert [e["loss"] for e in again.events(run_id)] == [2.5]
    assert again.schema_version == len(MIGRATIONS)


def test_new_migration_upgrades_without_losing_runs(tmp_path, monkeypatch):
    path = tmp_path / "runs.sqlite"
    old = Store(path)
    run_id = old.create_run("heal", "m", {"steps": 10})
    monkeypatch.setattr(store_module, "MIGRATIONS", (*MIGRATIONS, "ALTER TABLE runs ADD COLUMN note TEXT"))
    upgraded = Store(path)
    assert upgraded.schema_version == len(MIGRATIONS) + 1
    assert upgraded.get_run(run_id).settings == {"steps": 10}
    with closing(sqlite3.connect(path)) as db:
        assert "note" in [row[1] for row in db.execute("PRAGMA table_info(runs)")]


def test_store_from_a_newer_version_is_refused(tmp_path):
    path = tmp_path / "runs.sqlite"
    Store(path)
    with closing(sqlite3.connect(path)) as db:
        db.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 5}")
    with pytest.raises(ExplorerError, match="newer"):
        Store(path)


def test_find_done_returns_only_finished_runs(store):
    running = store.create_run("similarity", "m", {}, cache_key="key")
    failed = store.create_run("similarity", "m", {}, cache_key="key")
    store.fail_run(failed, "boom")
    assert store.find_done("similarity", "key") is None
    done = store.create_run("similarity", "m", {}, cache_key="key")
    store.finish_run(done, {"x": 1})
    newer = store.create_run("similarity", "m", {}, cache_key="key")
    store.fail_run(newer, "stopped", status="cancelled")
    found = store.find_done("similarity", "key")
    assert found is not None and found.id == done and found.result == {"x": 1}
    assert store.find_done("heal", "key") is None and store.find_done("similarity", "other") is None
    assert store.get_run(running).status == "running"
    assert store.get_run(failed).error == "boom"


def test_list_runs_filters_newest_first(store):
    a = store.create_run("similarity", "m", {})
    b = store.create_run("heal", "m", {})
    c = store.create_run("similarity", "m", {})
    store.finish_run(c, {})
    assert [r.id for r in store.list_runs()] == [c, b, a]
    assert [r.id for r in store.list_runs(kind="similarity")] == [c, a]
    assert [r.id for r in store.list_runs(kind="similarity", status="done")] == [c]


def test_delete_cascades_events(store):
    keep = store.create_run("heal", "m", {})
    gone = store.create_run("heal", "m", {})
    for step in range(3):
        store.add_event(gone, step, {"loss": float(step)})
    store.add_event(keep, 0, {"loss": 1.0})
    store.delete_run(gone)
    with pytest.raises(ExplorerError, match="does not exist"):
        store.get_run(gone)
    with closing(sqlite3.connect(store.path)) as db:
        assert db.execute("SELECT run_id, COUNT(*) FROM events GROUP BY run_id").fetchall() == [(keep, 1)]
    assert store.events(keep)[0]["loss"] == 1.0


def test_events_keep_step_order(store):
    run_id = store.create_run("heal", "m", {})
    for step in (2, 0, 1):
        store.add_event(run_id, step, {"value": step * 10})
    events = store.events(run_id)
    assert [e["step"] for e in events] == [0, 1, 2] and [e["value"] for e in events] == [0, 10, 20]
    assert all(isinstance(e["time"], float) for e in events)


def test_update_run_rejects_unknown_fields(store):
    run_id = store.create_run("heal", "m", {})
    with pytest.raises(ValueError, match="Unknown run fields"):
        store.update_run(run_id, kind="other")
    store.update_run(run_id, pid=1234, status="queued")
    run = store.get_run(run_id)
    assert (run.pid, run.status) == (1234, "queued") and run.updated >= run.created


def test_corrupt_file_is_a_user_error(tmp_path):
    path = tmp_path / "runs.sqlite"
    path.write_bytes(b"this is not a database, just some bytes that happen to be here" * 100)
    with pytest.raises(ExplorerError, match="is damaged .*rename it"):
        Store(path)
    assert path.read_bytes().startswith(b"this is not a database")  # the user's file is left as it was

"""The SQLite run store: migrations, persistence across processes/reopens, cache lookups,
cascading deletes, and clear errors for files it cannot read."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from contextlib import closing

import pytest

import explorer.state.store as store_module
from explorer.core.errors import ExplorerError
from explorer.state.store import MIGRATIONS, Store


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
    with first.running(run_id) as run:
        first.add_event(run_id, {"loss": 2.5}, step=1)
        run.result = {"distances": [[0.1, 0.2]]}
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
    store.update_run(failed, status="failed", error="boom")
    assert store.find_done("similarity", "key") is None
    done = store.create_run("similarity", "m", {}, cache_key="key")
    store.update_run(done, status="done", result={"x": 1})
    newer = store.create_run("similarity", "m", {}, cache_key="key")
    store.update_run(newer, status="cancelled", error="stopped")
    found = store.find_done("similarity", "key")
    assert found is not None and found.id == done and found.result == {"x": 1}
    assert store.find_done("heal", "key") is None and store.find_done("similarity", "other") is None
    assert store.get_run(running).status == "running"
    assert store.get_run(failed).error == "boom"


def test_list_runs_filters_newest_first(store):
    a = store.create_run("similarity", "m", {})
    b = store.create_run("heal", "m", {})
    c = store.create_run("similarity", "m", {})
    store.update_run(c, status="done", result={})
    assert [r.id for r in store.list_runs()] == [c, b, a]
    assert [r.id for r in store.list_runs(kind="similarity")] == [c, a]
    assert [r.id for r in store.list_runs(kind="similarity", status="done")] == [c]


def test_delete_cascades_events(store):
    keep = store.create_run("heal", "m", {})
    gone = store.create_run("heal", "m", {})
    for step in range(3):
        store.add_event(gone, {"loss": float(step)}, step=step)
    store.add_event(keep, {"loss": 1.0}, step=0)
    store.delete_run(gone)
    with pytest.raises(ExplorerError, match="does not exist"):
        store.get_run(gone)
    with closing(sqlite3.connect(store.path)) as db:
        assert db.execute("SELECT run_id, COUNT(*) FROM events GROUP BY run_id").fetchall() == [(keep, 1)]
    assert store.events(keep)[0]["loss"] == 1.0


def test_events_come_back_in_the_order_they_were_added(store):
    """The store numbers each run's events (seq); a step is a heal run's training step, kept as
    given, and events without one (sweep points, phases) have none."""
    run_id, other = store.create_run("heal", "m", {}), store.create_run("sweep", "m", {})
    numbers = [store.add_event(run_id, {"value": step * 10}, step=step) for step in (2, 0, 1)]
    numbers += [store.add_event(run_id, {"kind": "error"})]
    assert numbers == [0, 1, 2, 3] and store.add_event(other, {"kind": "plan"}) == 0  # numbered per run
    events = store.events(run_id)
    assert [e.get("step") for e in events] == [2, 0, 1, None] and [e.get("value") for e in events] == [20, 0, 10, None]
    assert "step" not in store.events(other)[0]
    assert all(isinstance(e["time"], float) for e in events)


def test_concurrent_writers_get_distinct_sequence_numbers(store):
    """Threads appending to one run at once (each call its own connection, as processes do):
    every event is kept and numbered 0..N-1 with no gap or repeat."""
    from concurrent.futures import ThreadPoolExecutor

    run_id = store.create_run("sweep", "m", {})
    with ThreadPoolExecutor(4) as pool:
        numbers = list(pool.map(lambda i: store.add_event(run_id, {"i": i}), range(80)))
    assert sorted(numbers) == list(range(80))
    assert sorted(e["i"] for e in store.events(run_id)) == list(range(80))


def test_update_run_rejects_unknown_fields(store):
    run_id = store.create_run("heal", "m", {})
    with pytest.raises(ValueError, match="Unknown run fields"):
        store.update_run(run_id, kind="other")
    store.update_run(run_id, pid=1234, status="queued")
    run = store.get_run(run_id)
    assert (run.pid, run.status) == (1234, "queued") and run.updated >= run.created


def test_corrupt_file_is_set_aside_and_said(tmp_path):
    """A file that is not a store is never overwritten: it is moved aside whole, the message says
    where, and only then does a new, empty store start under the name."""
    path = tmp_path / "runs.sqlite"
    data = b"this is not a database, just some bytes that happen to be here" * 100
    path.write_bytes(data)
    with pytest.raises(ExplorerError, match="is damaged .*moved to runs.sqlite.damaged-"):
        Store(path)
    [aside] = tmp_path.glob("runs.sqlite.damaged-*")
    assert aside.read_bytes() == data  # the user's file is kept as it was
    assert Store(path).list_runs() == []


def test_running_records_each_outcome_in_one_format(store):
    """Store.running, the one owner of a run's outcome: done with the result; an ExplorerError's
    own sentence on one line; a bug as its type and first line; cancelled on a cancel."""
    from explorer.core.errors import Cancelled

    def outcome(body, status="running", cancelled=()) -> tuple:
        run_id = store.create_run("sweep", "m", {}, status=status)
        with contextlib.suppress(BaseException), store.running(run_id, cancelled) as run:
            run.result = body()
        run = store.get_run(run_id)
        return run.status, run.error, run.result

    def fail(exc: BaseException):
        raise exc

    class Stop(BaseException):
        pass

    assert outcome(lambda: {"points": 3}, status="queued") == ("done", None, {"points": 3})
    assert outcome(lambda: fail(ExplorerError("The task file is empty:\n  pick another."))) == (
        "failed", "The task file is empty: pick another.", None)
    assert outcome(lambda: fail(KeyError("gate_proj"))) == ("failed", "KeyError: 'gate_proj'", None)
    assert outcome(lambda: fail(RuntimeError("CUDA error\nsecond line"))) == ("failed", "RuntimeError: CUDA error", None)
    assert outcome(lambda: fail(ZeroDivisionError())) == ("failed", "ZeroDivisionError", None)
    assert outcome(lambda: fail(Cancelled("The sweep was cancelled."))) == ("cancelled", "The sweep was cancelled.", None)
    assert outcome(lambda: fail(KeyboardInterrupt())) == ("cancelled", "interrupted", None)
    assert outcome(lambda: fail(Stop("stopped by SIGTERM")), cancelled=(Stop,)) == ("cancelled", "stopped by SIGTERM", None)
    assert outcome(lambda: fail(Stop("x")))[:2] == ("failed", "Stop: x")  # not a cancel type of this caller


def test_running_lets_a_cancel_from_outside_stand(store):
    """A run cancelled while it works (jobs.cancel from a page) stays cancelled however it ends,
    the body can see it, and a run cancelled before it started is refused without running."""
    run_id = store.create_run("sweep", "m", {})
    with store.running(run_id) as run:
        assert not run.cancelled()
        store.transition(run_id, ("queued", "running"), status="cancelled", error="cancelled by the user")
        assert run.cancelled()
        run.result = {"points": 1}
    assert (store.get_run(run_id).status, store.get_run(run_id).result) == ("cancelled", None)
    queued = store.create_run("sweep", "m", {}, status="queued")
    store.transition(queued, "queued", status="cancelled")
    ran = []
    with pytest.raises(ExplorerError, match=f"Run {queued} is cancelled, so it was not started"):
        with store.running(queued):
            ran.append(True)
    assert not ran and store.get_run(queued).status == "cancelled"
    assert not store.transition(queued, ("queued", "running"), status="failed")  # an ended run is left as it is


def test_cached_records_a_failure_and_the_next_call_computes_again(store):
    with pytest.raises(ValueError):
        store.cached("quick-eval", "k", "m", {}, lambda: int("x"))
    failed = store.list_runs(kind="quick-eval")[0]
    assert (failed.status, failed.error) == ("failed", "ValueError: invalid literal for int() with base 10: 'x'")
    run_id, result, hit = store.cached("quick-eval", "k", "m", {}, lambda: {"accuracy": 0.5})
    assert (result, hit, store.get_run(run_id).status) == ({"accuracy": 0.5}, False, "done")
    assert store.cached("quick-eval", "k", "m", {}, lambda: {"accuracy": 0.0})[1:] == ({"accuracy": 0.5}, True)


def test_events_of_a_version_1_store_are_numbered_on_upgrade(tmp_path, monkeypatch):
    """A store written before events had sequence numbers: a heal run's events (step = training
    step, in its data too) and a sweep's (step = an ordinal, not in its data), written as that
    code wrote them, keep their order; heal steps stay, the sweep's ordinals go; appending goes on."""
    path = tmp_path / "runs.sqlite"
    monkeypatch.setattr(store_module, "MIGRATIONS", MIGRATIONS[:1])
    Store(path)
    with closing(sqlite3.connect(path)) as db, db:  # runs as version 1 wrote them (no owner column yet)
        heal, sweep = (db.execute("INSERT INTO runs (kind, status, model, settings, created, updated) "
                                  "VALUES (?, 'running', 'm', '{}', 0, 0)", (kind,)).lastrowid for kind in ("heal", "sweep"))
    heal_events = [{"kind": "phase", "step": 0, "phase": "training"}, {"kind": "train", "step": 1, "train_loss": 2.0},
                   {"kind": "train", "step": 2, "train_loss": 1.5}, {"kind": "error", "step": 0, "error": "rank 1 died"}]
    sweep_events = [{"kind": "phase", "phase": "loading the model"}, {"kind": "plan", "points": 2},
                    {"kind": "point", "n": 0, "accuracy": 0.5}, {"kind": "point", "n": 3, "accuracy": 0.25}]
    with closing(sqlite3.connect(path)) as db, db:
        for number, (heal_event, sweep_event) in enumerate(zip(heal_events, sweep_events)):
            db.execute("INSERT INTO events (run_id, step, time, data) VALUES (?, ?, ?, ?)",
                       (heal, heal_event["step"], 100.0 + number, json.dumps(heal_event)))
            db.execute("INSERT INTO events (run_id, step, time, data) VALUES (?, ?, ?, ?)",
                       (sweep, number, 200.0 + number, json.dumps(sweep_event)))
        rows = db.execute("SELECT step, time, data FROM events WHERE run_id = ? ORDER BY step, rowid", (heal,)).fetchall()
    before = [{**json.loads(data), "step": step, "time": time} for step, time, data in rows]  # as version 1 read them
    monkeypatch.setattr(store_module, "MIGRATIONS", MIGRATIONS)
    upgraded = Store(path)
    assert upgraded.schema_version == len(MIGRATIONS)
    assert upgraded.events(heal) == before  # same order (by step, then as written), steps and times
    assert [e["kind"] for e in upgraded.events(heal)] == ["phase", "error", "train", "train"]
    assert upgraded.events(sweep) == [{**event, "time": 200.0 + number} for number, event in enumerate(sweep_events)]
    assert upgraded.add_event(sweep, {"kind": "phase", "phase": "resuming"}) == 4
    assert upgraded.add_event(heal, {"kind": "train", "step": 3}, step=3) == 4
    assert upgraded.events(heal)[-1]["step"] == 3
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT COUNT(*) FROM events WHERE step IS NOT NULL").fetchone()[0] == 5  # heal's only

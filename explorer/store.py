"""SQLite store of every run (similarity, metrics, brute-force, quick-eval, heal, sweep) and its live events.

One file under `EXPLORER_HOME`, opened per operation in WAL mode so the Streamlit server,
background jobs and the CLI read and write it at once. Rows are never rewritten by a failing
run except its own, so a crash cannot lose saved work. The schema is versioned: each entry
of MIGRATIONS upgrades one version, applied in order on open.
"""

from __future__ import annotations

import errno
import json
import sqlite3
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from explorer.concurrency import single_flight
from explorer.errors import ExplorerError
from explorer.paths import explorer_home

MIGRATIONS = (
    """
    CREATE TABLE runs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL,
        cache_key TEXT,
        status TEXT NOT NULL,
        model TEXT NOT NULL,
        settings TEXT NOT NULL,
        result TEXT,
        error TEXT,
        pid INTEGER,
        created REAL NOT NULL,
        updated REAL NOT NULL
    );
    CREATE INDEX runs_kind_key ON runs (kind, cache_key);
    CREATE TABLE events (
        run_id INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
        step INTEGER NOT NULL,
        time REAL NOT NULL,
        data TEXT NOT NULL
    );
    CREATE INDEX events_run ON events (run_id, step);
    """,
)

@dataclass
class Run:
    id: int
    kind: str
    cache_key: str | None
    status: str
    model: str
    settings: dict
    result: dict | None
    error: str | None
    pid: int | None
    created: float
    updated: float


def default_path() -> Path:
    return explorer_home() / "explorer.sqlite"


class Store:
    """Runs and events; every method opens its own short transaction."""

    def __init__(self, path: Path | str | None = None):
        self.path = Path(path) if path else default_path()
        with self._connect() as db:
            self._migrate(db)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """A connection in WAL mode; any SQLite failure, here or in the caller's statements,
        becomes one ExplorerError saying what is wrong (store_error)."""
        try:
            db = sqlite3.connect(self.path, timeout=30)
            db.row_factory = sqlite3.Row
            try:
                _retry_locked(lambda: db.execute("PRAGMA journal_mode=WAL"))
                db.execute("PRAGMA foreign_keys=ON")
                yield db
                db.commit()
            finally:
                db.close()
        except sqlite3.Error as exc:
            raise store_error(self.path, exc) from exc

    @staticmethod
    def _migrate(db: sqlite3.Connection) -> None:
        """Apply the missing migrations in one IMMEDIATE transaction (the write lock is taken
        before the version is read), so processes opening a new store at once migrate it once."""
        if db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS):
            return
        db.isolation_level = None  # transactions by hand below
        _retry_locked(lambda: db.execute("BEGIN IMMEDIATE"))
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > len(MIGRATIONS):
                raise ExplorerError("The run store was written by a newer Layer-Pruning Explorer; upgrade to read it.")
            for number, script in enumerate(MIGRATIONS[version:], version + 1):
                for statement in script.split(";"):  # DDL only: no semicolons inside statements
                    if statement.strip():
                        db.execute(statement)
                db.execute(f"PRAGMA user_version = {number}")
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:  # SQLite may have rolled back already (a full disk, a lost lock): keep the real error
                db.execute("ROLLBACK")
            raise
        finally:
            db.isolation_level = ""

    @property
    def schema_version(self) -> int:
        with self._connect() as db:
            return db.execute("PRAGMA user_version").fetchone()[0]

    def create_run(self, kind: str, model: str, settings: dict, cache_key: str | None = None, status: str = "running") -> int:
        now = time.time()
        with self._connect() as db:
            cursor = db.execute(
                "INSERT INTO runs (kind, cache_key, status, model, settings, created, updated) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (kind, cache_key, status, model, json.dumps(settings), now, now),
            )
            return int(cursor.lastrowid)

    def update_run(self, run_id: int, **fields) -> None:
        """Set any of status, result, error, pid (result is stored as JSON)."""
        allowed = {"status", "result", "error", "pid"}
        if unknown := set(fields) - allowed:
            raise ValueError(f"Unknown run fields: {unknown}")
        if "result" in fields:
            fields["result"] = json.dumps(fields["result"])
        columns = ", ".join(f"{name} = ?" for name in fields)
        with self._connect() as db:
            db.execute(f"UPDATE runs SET {columns}, updated = ? WHERE id = ?", (*fields.values(), time.time(), run_id))

    def transition(self, run_id: int, expected: str, **fields) -> bool:
        """update_run only while the run's status is still `expected`, in one statement; returns
        whether it changed. A job's runner records its outcome this way, so a run the user
        cancelled meanwhile is never flipped to done or failed."""
        if "result" in fields:
            fields["result"] = json.dumps(fields["result"])
        columns = ", ".join(f"{name} = ?" for name in fields)
        with self._connect() as db:
            cursor = db.execute(f"UPDATE runs SET {columns}, updated = ? WHERE id = ? AND status = ?",
                                (*fields.values(), time.time(), run_id, expected))
            return cursor.rowcount == 1

    def finish_run(self, run_id: int, result: dict) -> None:
        self.update_run(run_id, status="done", result=result)

    def fail_run(self, run_id: int, error: str, status: str = "failed") -> None:
        self.update_run(run_id, status=status, error=error)

    def cached(self, kind: str, cache_key: str, model: str, settings: dict, compute: Callable[[], dict]) -> tuple[int, dict, bool]:
        """(run id, result, from cache): a finished run's result for this key, or `compute()` run as a
        new run, its failure recorded on the run before it propagates.

        Single flight: callers asking for the same key at once (sessions, threads, a CLI beside the
        server) compute it once; the others wait and get that run, marked as from the cache. A
        failed computation leaves the next waiter to try again."""
        if done := self.find_done(kind, cache_key):
            return done.id, done.result, True
        with single_flight(self.path.parent / f"{self.path.name}.locks", f"{self.path}|{kind}|{cache_key}"):
            if done := self.find_done(kind, cache_key):
                return done.id, done.result, True
            run_id = self.create_run(kind, model, settings, cache_key=cache_key)
            try:
                result = compute()
            except BaseException as exc:
                self.fail_run(run_id, str(exc) or type(exc).__name__)
                raise
            self.finish_run(run_id, result)
        return run_id, result, False

    def get_run(self, run_id: int) -> Run:
        with self._connect() as db:
            row = db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise ExplorerError(f"Run {run_id} does not exist (deleted?).")
        return _to_run(row)

    def find_done(self, kind: str, cache_key: str) -> Run | None:
        """The newest finished run with this key: what makes a reload instant."""
        with self._connect() as db:
            row = db.execute(
                "SELECT * FROM runs WHERE kind = ? AND cache_key = ? AND status = 'done' ORDER BY id DESC LIMIT 1",
                (kind, cache_key),
            ).fetchone()
        return _to_run(row) if row else None

    def list_runs(self, kind: str | None = None, status: str | None = None) -> list[Run]:
        query, args = "SELECT * FROM runs WHERE 1=1", []
        if kind:
            query, args = query + " AND kind = ?", [*args, kind]
        if status:
            query, args = query + " AND status = ?", [*args, status]
        with self._connect() as db:
            return [_to_run(row) for row in db.execute(query + " ORDER BY id DESC", args)]

    def delete_run(self, run_id: int) -> None:
        with self._connect() as db:
            db.execute("DELETE FROM runs WHERE id = ?", (run_id,))

    def add_event(self, run_id: int, step: int, data: dict) -> None:
        with self._connect() as db:
            db.execute("INSERT INTO events (run_id, step, time, data) VALUES (?, ?, ?, ?)", (run_id, step, time.time(), json.dumps(data)))

    def events(self, run_id: int) -> list[dict]:
        """Events in order, each as its data plus 'step' and 'time'."""
        with self._connect() as db:
            rows = db.execute("SELECT step, time, data FROM events WHERE run_id = ? ORDER BY step, rowid", (run_id,)).fetchall()
        return [{**json.loads(r["data"]), "step": r["step"], "time": r["time"]} for r in rows]


def _retry_locked(statement: Callable[[], object], attempts: int = 50) -> None:
    """Run a statement that SQLite may refuse at once with 'database is locked' while another
    process creates or migrates the store (switching to WAL and BEGIN IMMEDIATE can skip the
    busy timeout), retrying for a few seconds."""
    for attempt in range(attempts):
        try:
            statement()
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(0.1)


def _folder_problem(folder: Path) -> str | None:
    """'read-only' or 'full' when a file cannot be created in the folder, else None. Trying is the
    only honest test: os.access says yes to root even on a read-only or immutable folder."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            return None
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            return "full"
        return "read-only" if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS) else None


def store_error(path: Path, exc: sqlite3.Error) -> ExplorerError:
    """One sentence for a failed store operation, naming the real cause. Only a damaged file is
    worth moving aside; a read-only folder or a full disk says so and leaves the runs alone."""
    name = getattr(exc, "sqlite_errorname", "")
    problem = _folder_problem(path.parent) if path.parent.is_dir() else "missing"
    if problem == "missing":
        return ExplorerError(f"The run store's folder {path.parent} does not exist: create it or set EXPLORER_HOME.")
    if name.startswith("SQLITE_READONLY") or problem == "read-only":
        return ExplorerError(f"The run store's folder {path.parent} is read-only ({exc}): make it writable or set "
                             "EXPLORER_HOME to a writable folder; the saved runs are untouched.")
    if name.startswith("SQLITE_FULL") or problem == "full":
        return ExplorerError(f"The disk holding the run store {path} is full: free some space and try again; "
                             "the saved runs are untouched.")
    if name.startswith("SQLITE_IOERR"):
        return ExplorerError(f"Could not write the run store {path} ({exc}): the disk is probably full or failing; "
                             "free some space and try again (the saved runs are untouched).")
    if name in ("SQLITE_CORRUPT", "SQLITE_NOTADB") or isinstance(exc, sqlite3.DatabaseError) and not isinstance(
            exc, sqlite3.OperationalError):
        return ExplorerError(f"The run store {path} is damaged ({exc}): rename it (for example to {path.name}.damaged) "
                             "and the app starts a new, empty one.")
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        return ExplorerError(f"The run store {path} stayed locked by another process for 30 s: try again.")
    return ExplorerError(f"The run store {path} failed ({exc}): check EXPLORER_HOME.")


def _to_run(row: sqlite3.Row) -> Run:
    return Run(
        id=row["id"],
        kind=row["kind"],
        cache_key=row["cache_key"],
        status=row["status"],
        model=row["model"],
        settings=json.loads(row["settings"]),
        result=json.loads(row["result"]) if row["result"] else None,
        error=row["error"],
        pid=row["pid"],
        created=row["created"],
        updated=row["updated"],
    )

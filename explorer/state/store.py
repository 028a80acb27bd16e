"""SQLite store of every run (similarity, metrics, brute-force, quick-eval, heal, sweep) and its live events.

One file under `EXPLORER_HOME`, opened per operation in WAL mode so the Streamlit server,
background jobs and the CLI read and write it at once. Rows are never rewritten by a failing
run except its own, so a crash cannot lose saved work. The schema is versioned: each entry
of MIGRATIONS upgrades one version, applied in order on open.

A run's own outcome is recorded in one place, `Store.running`: the background runner, the CLI's
foreground runs and `Store.cached` all run their work inside it. Others end a run only from the
outside, through `transition`: a user's cancel (jobs.cancel) and the reaping of a dead runner.
Events are numbered by the store (`seq`, per run, in the order they were added), which is the
order readers get them in; `step` is a heal run's training step, absent from other events.
"""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import tempfile
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ContextManager, Iterator

from explorer.core.concurrency import single_flight
from explorer.core.errors import Cancelled, ExplorerError
from explorer.core.paths import explorer_home

ACTIVE = ("queued", "running")  # the statuses of a run that has not ended

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
    # 2: events get a per-run sequence number assigned by the store (the reading order), and `step`
    # becomes what it means, a heal run's training step: NULL for the other kinds, whose callers
    # filled it with an ordinal. Existing events keep the order readers saw (step, then insertion).
    """
    CREATE TABLE events_numbered (
        run_id INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
        seq INTEGER NOT NULL,
        step INTEGER,
        time REAL NOT NULL,
        data TEXT NOT NULL,
        PRIMARY KEY (run_id, seq)
    );
    INSERT INTO events_numbered (run_id, seq, step, time, data)
        SELECT events.run_id, ROW_NUMBER() OVER (PARTITION BY events.run_id ORDER BY events.step, events.rowid) - 1,
               CASE WHEN runs.kind = 'heal' THEN events.step END, events.time, events.data
        FROM events LEFT JOIN runs ON runs.id = events.run_id;
    DROP TABLE events;
    ALTER TABLE events_numbered RENAME TO events;
    """,
    # 3: whose runs they are. `owner` is the visitor key of the browser session that started the run
    # (NULL: the command line, or a run stored before visitors were told apart); run_visitors lists
    # every visitor a run was started for or shown to (a cached heatmap another visitor computed
    # first), which is what a visitor's pages may open on (explorer.views.session).
    """
    ALTER TABLE runs ADD COLUMN owner TEXT;
    CREATE TABLE run_visitors (
        run_id INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
        visitor TEXT NOT NULL,
        PRIMARY KEY (run_id, visitor)
    );
    CREATE INDEX run_visitors_visitor ON run_visitors (visitor, run_id);
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
    owner: str | None = None  # the visitor key of the session that started it; None: the command line


def default_path() -> Path:
    return explorer_home() / "explorer.sqlite"


class Store:
    """Runs and events; every method opens its own short transaction."""

    def __init__(self, path: Path | str | None = None):
        self.path = Path(path) if path else default_path()
        with self._connect() as db:
            self._migrate(db)
        self._check_once()

    def _check_once(self) -> None:
        """Read the whole file once per process (SQLite's quick_check): damage in pages no query
        happens to touch would otherwise go unnoticed while new runs are written beside it."""
        if self.path in _CHECKED:
            return
        with self._connect() as db:
            problems = [row[0] for row in db.execute("PRAGMA quick_check(3)")]
        if problems != ["ok"]:
            raise set_aside(self.path, "; ".join(problems))
        _CHECKED.add(self.path)

    def _create(self) -> None:
        """Make a new store whole and give it its name only then (a hard link, which never replaces
        a store another process made meanwhile), so the store's own name never points at an empty
        or half-made file: a 0-byte store is always damage, never one being created."""
        fresh = self.path.with_name(f".{self.path.name}.{os.getpid()}-{threading.get_ident()}.new")
        try:
            db = sqlite3.connect(fresh, timeout=30)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                self._migrate(db)
            finally:
                db.close()
            try:
                os.link(fresh, self.path)
            except FileExistsError:
                pass  # another process created it first: use theirs
            except OSError:  # a file system without hard links
                if not self.path.exists():
                    os.rename(fresh, self.path)
        except sqlite3.Error as exc:
            raise store_error(self.path, exc) from exc
        except OSError as exc:
            raise store_error(self.path, sqlite3.OperationalError(str(exc))) from exc
        finally:
            for leftover in (fresh, fresh.with_name(fresh.name + "-wal"), fresh.with_name(fresh.name + "-shm")):
                leftover.unlink(missing_ok=True)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """A connection in WAL mode; any SQLite failure, here or in the caller's statements,
        becomes one ExplorerError saying what is wrong (store_error). A missing store is created
        (it may have been set aside as damaged); an empty one is damage: it is set aside."""
        if not self.path.exists() and self.path.parent.is_dir():
            self._create()
        elif self.path.is_file() and self.path.stat().st_size == 0:
            raise set_aside(self.path, "the file is empty (0 bytes)")
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
            if _damaged(exc):
                raise set_aside(self.path, str(exc)) from exc
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

    def create_run(self, kind: str, model: str, settings: dict, cache_key: str | None = None, status: str = "running",
                   owner: str | None = None) -> int:
        """A new run; `owner` is the visitor key of the session starting it (None: the command line)."""
        now = time.time()
        with self._connect() as db:
            cursor = db.execute(
                "INSERT INTO runs (kind, cache_key, status, model, settings, created, updated, owner) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (kind, cache_key, status, model, json.dumps(settings), now, now, owner),
            )
            run_id = int(cursor.lastrowid)
            if owner is not None:
                db.execute("INSERT INTO run_visitors (run_id, visitor) VALUES (?, ?)", (run_id, owner))
            return run_id

    def add_visitor(self, run_id: int, visitor: str | None) -> None:
        """Record that this run was shown to this visitor (a cached result they asked for), so their
        pages may open on it later; the run's owner stays who started it."""
        if visitor is None:
            return
        with self._connect() as db:
            db.execute("INSERT OR IGNORE INTO run_visitors (run_id, visitor) "
                       "SELECT id, ? FROM runs WHERE id = ?", (visitor, run_id))

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

    def transition(self, run_id: int, expected: str | tuple[str, ...], **fields) -> bool:
        """update_run only while the run's status is still `expected` (one status or several), in one
        statement; returns whether it changed. Every outcome is recorded this way, so a run the user
        cancelled meanwhile is never flipped to done or failed, nor a finished one to cancelled."""
        expected = (expected,) if isinstance(expected, str) else expected
        if "result" in fields:
            fields["result"] = json.dumps(fields["result"])
        columns = ", ".join(f"{name} = ?" for name in fields)
        marks = ", ".join("?" * len(expected))
        with self._connect() as db:
            cursor = db.execute(f"UPDATE runs SET {columns}, updated = ? WHERE id = ? AND status IN ({marks})",
                                (*fields.values(), time.time(), run_id, *expected))
            return cursor.rowcount == 1

    @contextmanager
    def running(self, run_id: int, cancelled: tuple[type[BaseException], ...] = (),
                shield: Callable[[], ContextManager[object]] = nullcontext) -> Iterator["Running"]:
        """A run's lifecycle: marks the queued (or just created) run running, yields a `Running`
        whose `result` the body sets, and on exit records the outcome: done with that result;
        cancelled on `Cancelled`, Ctrl-C or one of the caller's `cancelled` types; failed on
        anything else, with `failure_message`. The exception always propagates. Each outcome is
        recorded only while the run is still running, so a cancel from outside stands.

        `shield` (the job runner's StopFlag.critical) wraps each outcome's write, so an
        asynchronous cancel cannot interrupt it halfway; it is raised once the write is done.
        A run that is no longer queued or running (cancelled while it waited) is refused with an
        ExplorerError before the body runs."""
        if not self.transition(run_id, ("queued", "running"), status="running"):
            raise ExplorerError(f"Run {run_id} is {self.get_run(run_id).status}, so it was not started.")
        run = Running(self, run_id)
        try:
            yield run
        except (Cancelled, KeyboardInterrupt, *cancelled) as exc:
            with shield():
                self.transition(run_id, "running", status="cancelled", error=" ".join(str(exc).split()) or "interrupted")
            raise
        except BaseException as exc:
            with shield():
                self.transition(run_id, "running", status="failed", error=failure_message(exc))
            raise
        with shield():
            self.transition(run_id, "running", status="done", result=run.result)

    def cached(self, kind: str, cache_key: str, model: str, settings: dict, compute: Callable[[], dict]) -> tuple[int, dict, bool]:
        """(run id, result, from cache): a finished run's result for this key, or `compute()` run as a
        new run (Store.running records its outcome; a failure propagates).

        Single flight: callers asking for the same key at once (sessions, threads, a CLI beside the
        server) compute it once; the others wait and get that run, marked as from the cache. A
        failed computation leaves the next waiter to try again."""
        if done := self.find_done(kind, cache_key):
            return done.id, done.result, True
        with single_flight(self.path.parent / f"{self.path.name}.locks", f"{self.path}|{kind}|{cache_key}"):
            if done := self.find_done(kind, cache_key):
                return done.id, done.result, True
            with self.running(self.create_run(kind, model, settings, cache_key=cache_key)) as run:
                run.result = compute()
        return run.id, run.result, False

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

    def list_runs(self, kind: str | None = None, status: str | None = None, visitor: str | None = None) -> list[Run]:
        """Runs newest first, of one kind and status when given; with `visitor`, only the runs that
        visitor started or was shown (None: every run, as the operator sees them)."""
        query, args = "SELECT * FROM runs WHERE 1=1", []
        if kind:
            query, args = query + " AND kind = ?", [*args, kind]
        if status:
            query, args = query + " AND status = ?", [*args, status]
        if visitor is not None:
            query, args = query + " AND id IN (SELECT run_id FROM run_visitors WHERE visitor = ?)", [*args, visitor]
        with self._connect() as db:
            return [_to_run(row) for row in db.execute(query + " ORDER BY id DESC", args)]

    def delete_run(self, run_id: int) -> None:
        with self._connect() as db:
            db.execute("DELETE FROM runs WHERE id = ?", (run_id,))

    def add_event(self, run_id: int, data: dict, *, step: int | None = None) -> int:
        """Append an event to the run and return its sequence number (0, 1, ... per run), assigned
        in the same statement as the insert, so writers never collide or re-read the run's events.
        `step` is a heal run's training step; other events have none."""
        with self._connect() as db:
            return db.execute(
                "INSERT INTO events (run_id, seq, step, time, data) "
                "SELECT ?, COALESCE(MAX(seq), -1) + 1, ?, ?, ? FROM events WHERE run_id = ? RETURNING seq",
                (run_id, step, time.time(), json.dumps(data), run_id),
            ).fetchone()[0]

    def events(self, run_id: int) -> list[dict]:
        """Events in the order they were added, each as its data plus 'time' (and 'step' where it has one)."""
        with self._connect() as db:
            rows = db.execute("SELECT step, time, data FROM events WHERE run_id = ? ORDER BY seq", (run_id,)).fetchall()
        return [{**json.loads(r["data"]), **({} if r["step"] is None else {"step": r["step"]}), "time": r["time"]} for r in rows]


@dataclass
class Running:
    """The run inside `Store.running`: the body sets `result`, which is recorded when it ends."""

    store: Store
    id: int
    result: dict | None = None

    def cancelled(self) -> bool:
        """Whether the run was cancelled from outside (a page's Cancel): the between-steps check."""
        return self.store.get_run(self.id).status == "cancelled"


def failure_message(exc: BaseException) -> str:
    """The one line a failed run records: an ExplorerError's own sentence (what is wrong, what to
    do); anything else is a bug, recorded as its type and the first line of its message."""
    if isinstance(exc, ExplorerError):
        return " ".join(str(exc).split()) or type(exc).__name__
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


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
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        return ExplorerError(f"The run store {path} stayed locked by another process for 30 s: try again.")
    return ExplorerError(f"The run store {path} failed ({exc}): check EXPLORER_HOME.")


_CHECKED: set[Path] = set()  # stores this process has read whole once (Store._check_once)


def _damaged(exc: sqlite3.Error) -> bool:
    """Whether SQLite says the file itself is broken (not busy, full or read-only)."""
    return getattr(exc, "sqlite_errorname", "").startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB"))


def set_aside(path: Path, why: str) -> ExplorerError:
    """Move a damaged store (with its -wal and -shm files) aside under a dated name, never deleting
    it, and say so: the next use starts a new, empty store and the old runs stay in the moved file."""
    aside = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
    try:
        for suffix in ("-wal", "-shm", ""):
            try:
                os.replace(path.with_name(path.name + suffix), aside.with_name(aside.name + suffix))
            except FileNotFoundError:  # no such companion file, or another process moved it first
                pass
    except OSError as exc:
        return ExplorerError(f"The run store {path} is damaged ({why}) and could not be moved aside "
                             f"({exc.strerror or exc}): move it away by hand and a new, empty store starts.")
    _CHECKED.discard(path)
    return ExplorerError(f"The run store {path} is damaged ({why}): it was moved to {aside.name} beside it, kept for "
                         "recovery, and a new, empty store starts now.")


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
        owner=row["owner"],
    )


def of_kind(events: list[dict], kind: str) -> list[dict]:
    """The events of one kind ("point", "eval", "train", ...), in store order: how every reader
    of a run's events picks the ones it draws."""
    return [event for event in events if event.get("kind") == kind]

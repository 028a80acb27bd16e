"""Many sessions, one model: single flight per store key and one user of a shared model at a time.

The app keeps one loaded model per process, shared by every browser session (each session is a
thread of the Streamlit server). Two things go wrong without coordination:

- identical requests (two tabs pressing Run with the same settings) would both compute and both
  write a run; `single_flight(path, key)` lets the first caller compute while the others wait,
  then they find its finished run in the store. It holds a per-key thread lock and, where the
  folder is writable, an advisory file lock next to the store, so a CLI and the server computing
  the same key also compute it once;
- different requests on the same model would see each other's recording hooks (the similarity
  and metric passes hook every decoder layer) or deep-copy them into a pruned copy;
  `exclusive(model)` serialises every use of one model object (a re-entrant lock, so a backend
  function holding it may call another that takes it too).
"""

from __future__ import annotations

import fcntl
import hashlib
import threading
import weakref
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

_guard = threading.Lock()  # protects the two tables below
_model_locks: "weakref.WeakKeyDictionary[object, threading.RLock]" = weakref.WeakKeyDictionary()
_key_locks: dict[str, tuple[threading.Lock, int]] = {}  # key -> (lock, number of callers holding or waiting)


def model_lock(model: object) -> threading.RLock:
    """The one lock of this model object (pruned deep copies are other objects with their own)."""
    with _guard:
        lock = _model_locks.get(model)
        if lock is None:
            lock = _model_locks[model] = threading.RLock()
        return lock


@contextmanager
def exclusive(model: object) -> Iterator[None]:
    """Hold the model for a whole pass: hooks installed inside are never seen by another caller."""
    with model_lock(model):
        yield


@contextmanager
def _thread_key_lock(key: str) -> Iterator[None]:
    with _guard:
        lock, users = _key_locks.get(key, (None, 0))
        lock = lock or threading.Lock()
        _key_locks[key] = (lock, users + 1)
    try:
        with lock:
            yield
    finally:
        with _guard:
            lock, users = _key_locks[key]
            if users == 1:
                del _key_locks[key]  # the table only holds keys in use
            else:
                _key_locks[key] = (lock, users - 1)


@contextmanager
def _file_lock(folder: Path, key: str) -> Iterator[None]:
    """An flock on folder/<hash>.lock; nothing when the folder cannot be written (a read-only
    home still serves its saved runs, and the thread lock still covers this process)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle = open(folder / f"{hashlib.sha1(key.encode()).hexdigest()[:20]}.lock", "a")
    except OSError:
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def single_flight(lock_folder: Path, key: str) -> Iterator[None]:
    """One caller at a time per key, in this process (threads) and across processes (file lock)."""
    with _thread_key_lock(key), _file_lock(lock_folder, key):
        yield

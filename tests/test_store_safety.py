"""The store says what is really wrong (read-only folder, full disk, damaged file), four processes
can create a new store at once, and a damaged store (midway, or truncated to 0 bytes) is never
replaced silently nor written to: it is moved aside whole, with one message saying where."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from explorer.core.errors import ExplorerError
from explorer.state.store import MIGRATIONS, Store

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def read_only(tmp_path):
    """Make paths read-only for this process: chmod for a normal user; root ignores modes, so
    there the immutable attribute (chattr +i) does it, where the file system supports it."""
    frozen: list[Path] = []

    def freeze(*paths: Path) -> None:
        for path in paths:
            if os.geteuid() != 0:
                path.chmod(0o555 if path.is_dir() else 0o444)
            elif subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
                pytest.skip("running as root on a file system without chattr +i: cannot make a folder read-only")
            frozen.append(path)

    yield freeze
    for path in frozen:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(path)], check=True)
        else:
            path.chmod(0o755 if path.is_dir() else 0o644)


def test_read_only_home_is_reported_as_read_only(tmp_path, read_only):
    home = tmp_path / "home"
    home.mkdir()
    Store(home / "explorer.sqlite").create_run("similarity", "m", {})
    read_only(home / "explorer.sqlite", home)
    for path in (home / "explorer.sqlite", home / "new.sqlite"):  # a saved store, and a first start
        with pytest.raises(ExplorerError) as caught:
            Store(path).list_runs()
        message = str(caught.value)
        assert "is read-only" in message and "writable" in message
        assert "move it aside" not in message and "damaged" not in message


FILL_STORE = """
import sys
from explorer.core.errors import ExplorerError
from explorer.state.store import Store
store = Store(sys.argv[1])
try:
    store.create_run("similarity", "m", {"text": "x" * 3_000_000})
except ExplorerError as exc:
    print(exc)
"""


def test_full_disk_is_reported_as_full(tmp_path, full_disk):
    """A write the disk refuses (conftest's full_disk: files cannot grow past 1 MiB)."""
    path = tmp_path / "explorer.sqlite"
    Store(path).create_run("similarity", "m", {})
    out = subprocess.run([sys.executable, "-c", FILL_STORE, str(path)], cwd=REPO, capture_output=True, text=True,
                         preexec_fn=full_disk, timeout=120)
    assert "Traceback" not in out.stderr
    assert "full" in out.stdout and "untouched" in out.stdout, out.stdout
    assert "damaged" not in out.stdout and "move it aside" not in out.stdout
    assert len(Store(path).list_runs()) == 1  # the saved run is still there


CREATE_STORE = """
import sys, time
from explorer.state.store import Store
start = float(sys.argv[2])
time.sleep(max(0.0, start - time.time()))
Store(sys.argv[1]).create_run("similarity", "m", {})
print("ok")
"""


@pytest.mark.slow
def test_four_processes_create_a_new_store_at_once(tmp_path):
    import time

    for trial in range(3):
        path = tmp_path / f"trial{trial}" / "explorer.sqlite"
        path.parent.mkdir()
        start = time.time() + 1.5  # every process is started and waiting by then
        procs = [subprocess.Popen([sys.executable, "-c", CREATE_STORE, str(path), str(start)], cwd=REPO,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
        outputs = [p.communicate(timeout=120) for p in procs]
        assert [p.returncode for p in procs] == [0] * 4, [err for _, err in outputs]
        store = Store(path)
        assert store.schema_version == len(MIGRATIONS)
        assert len(store.list_runs()) == 4


def damage_midway(path: Path) -> None:
    """Overwrite the middle pages of a store with noise; the header still says SQLite."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[4096:middle + 4096] = os.urandom(middle)
    path.write_bytes(bytes(data))


@pytest.fixture()
def damaged_home(tmp_path, monkeypatch):
    """An EXPLORER_HOME whose store holds a few runs and was then damaged midway."""
    from pages import get_store

    monkeypatch.setenv("EXPLORER_HOME", str(tmp_path))
    store = Store()
    for number in range(40):
        run_id = store.create_run("similarity", "m", {"n": number, "pad": "x" * 2000})
        store.add_event(run_id, {"pad": "y" * 2000})
    damage_midway(store.path)
    get_store.clear()  # the app's cached store belongs to the session's home
    yield store.path
    get_store.clear()


def aside_files(store_path: Path) -> list[Path]:
    return sorted(store_path.parent.glob(f"{store_path.name}.damaged-*"))


def test_damaged_store_is_one_message_in_the_backend(damaged_home):
    damaged = damaged_home.read_bytes()
    with pytest.raises(ExplorerError, match="is damaged .*moved to explorer.sqlite.damaged-.*kept for recovery"):
        Store(damaged_home).list_runs()
    [aside] = [p for p in aside_files(damaged_home) if not p.name.endswith(("-wal", "-shm"))]
    assert aside.read_bytes() == damaged  # kept whole, never rewritten
    assert Store(damaged_home).list_runs() == []  # a new store starts under the name


WRITE_RUN = """
import sys
from explorer.core.errors import ExplorerError
from explorer.state.store import Store
try:
    print(Store(sys.argv[1]).create_run("similarity", "m", {}))
except ExplorerError as exc:
    print(exc)
"""


def test_a_store_damaged_midway_accepts_no_write(damaged_home):
    """A new process (a CLI command, a job) that only writes still finds the damage first."""
    out = subprocess.run([sys.executable, "-c", WRITE_RUN, str(damaged_home)], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert "Traceback" not in out.stderr, out.stderr
    assert "is damaged" in out.stdout and "moved to" in out.stdout, out.stdout
    assert aside_files(damaged_home)


def test_a_store_truncated_to_0_bytes_is_said_and_kept(tmp_path):
    path = tmp_path / "explorer.sqlite"
    Store(path).create_run("similarity", "m", {})
    path.write_bytes(b"")
    out = subprocess.run([sys.executable, "-c", WRITE_RUN, str(path)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert "is damaged (the file is empty (0 bytes))" in out.stdout, out.stdout
    [aside] = aside_files(path)
    assert aside.stat().st_size == 0
    assert Store(path).list_runs() == []


def test_damaged_store_is_one_message_in_the_app(damaged_home):
    at = AppTest.from_file("../app.py", default_timeout=60)
    at.run()
    at.switch_page("pages/runs.py").run()
    assert not at.exception
    assert [e.value for e in at.error] and all("is damaged" in e.value for e in at.error)
    assert aside_files(damaged_home)

"""The README's "Serving a class": loopback by default, and on a reachable address no remote code,
no server paths, no deleting and no pushing to the hub unless the operator switched them on when launching."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import tomllib
from streamlit import config
from streamlit.testing.v1 import AppTest

from explorer.core.errors import ExplorerError
from explorer.core.policy import (
    ALLOW_DELETE,
    ALLOW_PUSH,
    ALLOW_REMOTE_CODE,
    ALLOW_SERVER_PATHS,
    check_delete,
    check_model_source,
    check_push,
    check_remote_code,
    check_text_source,
    is_loopback,
    server_policy,
)
from explorer.state.store import Store
from explorer.views.runs import delete_run
from tests.screen import seen

REPO = Path(__file__).resolve().parents[1]


def make_app_command(*variables: str) -> str:
    """The command `make app` runs (dry run: nothing is installed or started)."""
    out = subprocess.run(["make", "-n", "app", *variables], cwd=REPO, capture_output=True, text=True, check=True).stdout
    return next(line for line in out.splitlines() if "streamlit run" in line)


def test_make_app_listens_on_loopback_unless_told_otherwise():
    assert "--server.address 127.0.0.1 " in make_app_command()
    assert "--server.address 0.0.0.0 " in make_app_command("HOST=0.0.0.0")


def test_uploads_are_capped_at_20_mb():
    settings = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())
    assert settings["server"]["maxUploadSize"] == 20


@pytest.mark.parametrize("address, loopback", [
    ("127.0.0.1", True), ("127.0.0.2", True), ("localhost", True), ("::1", True), ("[::1]", True),
    ("0.0.0.0", False), ("", False), (None, False), ("192.168.1.5", False), ("::", False), ("myhost", False),
])
def test_loopback_addresses(address, loopback):
    assert is_loopback(address) is loopback


def test_loopback_allows_everything_a_reachable_server_nothing_by_default():
    local = server_policy("127.0.0.1", {})
    assert (local.remote, local.remote_code, local.server_paths, local.delete, local.push) == (False, True, True, True, True)
    room = server_policy("0.0.0.0", {})
    assert (room.remote, room.remote_code, room.server_paths, room.delete, room.push) == (True, False, False, False, False)


@pytest.mark.parametrize("switch, field", [(ALLOW_REMOTE_CODE, "remote_code"), (ALLOW_SERVER_PATHS, "server_paths"),
                                           (ALLOW_DELETE, "delete"), (ALLOW_PUSH, "push")])
def test_each_switch_enables_only_its_power(switch, field):
    for value, on in (("1", True), ("true", True), ("yes", True), ("on", True), ("0", False), ("", False)):
        rules = server_policy("0.0.0.0", {switch: value})
        assert getattr(rules, field) is on
        others = {"remote_code", "server_paths", "delete", "push"} - {field}
        assert not any(getattr(rules, name) for name in others)


def test_checks_on_a_reachable_server(tmp_path):
    room, local = server_policy("0.0.0.0", {}), server_policy("127.0.0.1", {})
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    (tmp_path / "model").mkdir()
    for source in ("embedded", "Qwen/Qwen2.5-0.5B"):
        check_model_source(room, source)
    for source in (str(tmp_path / "model"), "/etc", "~/models/x", "./x", "m.gguf"):
        with pytest.raises(ExplorerError, match=f"{ALLOW_SERVER_PATHS}=1"):
            check_model_source(room, source)
        check_model_source(local, source)
    for source in ("embedded", "c4", str(uploads / "abc-notes.txt")):
        check_text_source(room, source, uploads)
    for source in ("/etc/passwd", str(uploads / ".." / "secret.txt"), "notes.txt"):
        with pytest.raises(ExplorerError, match="not from a path on it"):
            check_text_source(room, source, uploads)
        check_text_source(local, source, uploads)
    check_remote_code(room, False)
    with pytest.raises(ExplorerError, match=f"{ALLOW_REMOTE_CODE}=1"):
        check_remote_code(room, True)
    with pytest.raises(ExplorerError, match=f"{ALLOW_DELETE}=1"):
        check_delete(room)
    check_delete(local)
    with pytest.raises(ExplorerError, match=f"{ALLOW_PUSH}=1"):
        check_push(room)
    check_push(local)


@pytest.fixture()
def served_room():
    """The app as `make app HOST=0.0.0.0` serves it (AppTest reads the same option)."""
    config.set_option("server.address", "0.0.0.0")
    yield
    config.set_option("server.address", "127.0.0.1")


def similarity_page(model_path: Path) -> AppTest:
    """The Similarity page with a folder typed as the model (set before the first run, so the
    embedded model is never loaded)."""
    at = AppTest.from_file("../app.py", default_timeout=60)
    at.run()
    at.session_state["model_kind"] = "Hugging Face id / local path"
    at.session_state["model_path"] = str(model_path)
    return at.switch_page("pages/similarity.py").run()


def test_a_visitor_gets_no_remote_code_box_and_no_server_paths(served_room, tmp_path, monkeypatch):
    for name in (ALLOW_REMOTE_CODE, ALLOW_SERVER_PATHS):
        monkeypatch.delenv(name, raising=False)
    at = similarity_page(tmp_path)
    assert not at.exception
    assert "Trust remote code" not in [box.label for box in at.checkbox]
    assert any(f"{ALLOW_REMOTE_CODE}=1" in caption.value for caption in at.sidebar.caption)
    assert any(f"{ALLOW_SERVER_PATHS}=1" in seen(error.value) for error in at.error)
    assert at.sidebar.text_input(key="model_path").label == "Hugging Face model id"  # no folder offered


def test_the_operator_switches_the_box_on(served_room, tmp_path, monkeypatch):
    monkeypatch.setenv(ALLOW_REMOTE_CODE, "1")
    at = similarity_page(tmp_path / "missing")
    assert "Trust remote code" in [box.label for box in at.checkbox]


def test_a_visitor_cannot_delete_runs(served_room, monkeypatch):
    from explorer.state.store import Store

    monkeypatch.delenv(ALLOW_DELETE, raising=False)
    run_id = Store().create_run("similarity", "m", {}, status="done")
    at = AppTest.from_file("../app.py", default_timeout=60)
    at.run()
    at.switch_page("pages/runs.py").run()
    assert not at.exception
    assert not [b for b in at.button if b.label.startswith("Delete run")]
    assert any(f"{ALLOW_DELETE}=1" in caption.value for caption in at.caption)
    Store().get_run(run_id)  # still there


def test_delete_run_enforces_the_switch_and_spares_running_jobs(tmp_path):
    """The backend refuses a delete the operator did not allow, whatever the page shows."""
    store = Store(tmp_path / "store.sqlite")
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "weights.bin").write_bytes(b"x" * 1000)
    run = store.create_run("prune", "m", {"out": str(folder)}, status="done")
    room, local = server_policy("0.0.0.0", {}), server_policy("127.0.0.1", {})
    with pytest.raises(ExplorerError, match=f"{ALLOW_DELETE}=1"):
        delete_run(store, store.get_run(run), room, [folder])
    assert store.get_run(run).id == run and folder.exists()
    queued = store.create_run("sweep", "m", {}, status="queued")
    with pytest.raises(ExplorerError, match="cancel it before deleting"):
        delete_run(store, store.get_run(queued), local, [])
    assert store.get_run(queued).status == "queued"
    assert delete_run(store, store.get_run(run), local, [folder]) == 1000
    assert not folder.exists()
    with pytest.raises(ExplorerError):
        store.get_run(run)

"""A room you can trust (issue 20), as visitors of a served room meet it: every page and job goes
through one model-source check that never depends on the server's disk; a new visitor opens on the
defaults, never on another visitor's runs or upload paths; only the visitor who started a job (or
the operator, with `python -m explorer cancel`) cancels it; user-given text is plain text.
Streamlit's AppTest in this process for the pages, subprocesses for the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from streamlit import config
from streamlit.testing.v1 import AppTest

from explorer import jobs
from explorer.core.errors import ExplorerError
from explorer.core.paths import explorer_home
from explorer.core.policy import ALLOW_DELETE, ALLOW_SERVER_PATHS, check_model_source, server_policy
from explorer.lm.models import HUB_FAILURE, check_hub_source
from explorer.state.cache import cached_distances
from explorer.state.store import Store
from explorer.views.runs import delete_run, hide_paths, run_json
from explorer.views.session import first_run, model_name, page_runs
from explorer.views.text import plain
from tests.screen import seen

pytestmark = pytest.mark.usefixtures("own_rows")  # conftest: rows made here are deleted after each test

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 180
ROOM, LOCAL = server_policy("0.0.0.0", {}), server_policy("127.0.0.1", {})
A, B = "A" * 22, "B" * 22  # two visitors' keys (the pages make them with secrets.token_urlsafe(16))
CRAFTED = "[click me](https://evil.example/x) ![](https://evil.example/t.png) :red[x] www.evil.example"


@pytest.fixture()
def served_room(monkeypatch):
    """The app as `make app HOST=0.0.0.0` serves it, with none of the operator's switches on."""
    for name in (ALLOW_SERVER_PATHS, ALLOW_DELETE):
        monkeypatch.delenv(name, raising=False)
    config.set_option("server.address", "0.0.0.0")
    yield
    config.set_option("server.address", "127.0.0.1")



def visit(page: str, visitor: str | None = None, model_path: str | None = None) -> AppTest:
    """A fresh browser session (a new visitor, or `visitor` coming back with its key in the address) on `page`."""
    at = AppTest.from_file("../app.py", default_timeout=TIMEOUT)
    if visitor:
        at.query_params["visitor"] = visitor
    at.run()
    if model_path is not None:
        at.session_state["model_kind"] = "Hugging Face id / local path"
        at.session_state["model_path"] = model_path
    at.switch_page(page).run()
    assert not at.exception, at.exception
    return at


def texts(at: AppTest) -> list[str]:
    """Everything a reader sees as text: markdown, captions, messages, and every table cell."""
    shown = [seen(e.value) for kind in ("markdown", "caption", "error", "warning", "info", "success") for e in at.get(kind)]
    for frame in at.dataframe:
        shown += [str(cell) for cell in pd.DataFrame(frame.value).to_numpy().ravel()]
    return shown


# The one model-source check: decided by the text, the same sentence whatever the server holds.

def test_the_model_box_says_the_same_whether_a_server_path_exists_or_not(tmp_path, monkeypatch):
    (tmp_path / "org" / "model").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    for ok in ("embedded", "gpt2", "Qwen/Qwen2.5-0.5B", "meta-llama/Llama-2-7b-hf"):
        check_model_source(ROOM, ok)
    refusals = set()
    for path in ("/etc", "/nonexistent-lpe", str(tmp_path / "org"), str(tmp_path / "missing"), "~/x", "./org", "../x",
                 "org/model/weights", "m.gguf", "C:\\models"):
        with pytest.raises(ExplorerError) as caught:
            check_model_source(ROOM, path)
        refusals.add(str(caught.value))
    assert len(refusals) == 1 and f"{ALLOW_SERVER_PATHS}=1" in refusals.pop()
    # A hub-shaped name: the hub is asked first (offline here), so an existing folder and a missing one read alike.
    answers = set()
    for name in ("org/model", "org/missing"):
        with pytest.raises(ExplorerError) as caught:
            check_hub_source(name)
        answers.add(str(caught.value).replace("missing", "model"))
    assert len(answers) == 1


def test_a_hub_id_that_names_a_server_folder_is_never_loaded(tmp_path):
    """With the hub reachable (or the model cached) the name would pass the hub; transformers would then load
    the folder of that name: refused with the sentence a model the hub cannot give gets."""
    (tmp_path / "org" / "model").mkdir(parents=True)
    script = ("import os, sys; os.chdir(sys.argv[1]); from explorer.lm.models import check_hub_source\n"
              "try: check_hub_source('org/model')\nexcept Exception as e: print(e)")
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                         timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)})
    assert out.stdout.strip() == HUB_FAILURE.format(source="org/model"), out.stderr


def test_classification_goes_through_the_model_check(served_room, tmp_path):
    """The reported hole: a server folder typed on the Classification page started a job that loaded it."""
    at = visit("pages/classify.py", model_path=str(tmp_path))
    assert any(f"{ALLOW_SERVER_PATHS}=1" in seen(e.value) for e in at.error)
    assert not [b for b in at.button if b.key == "cl_start"]  # the form never got to its Start button
    assert not [run for run in Store().list_runs("classify") if run.model == str(tmp_path)]


# Whose runs a page opens on.

def test_session_rule_is_one_rule_for_every_kind(store):
    mine = store.create_run("heal", "embedded", {}, owner=A)  # the CLI stores "embedded", a page the loaded name
    theirs = store.create_run("heal", model_name("embedded"), {}, owner=B)
    cli = store.create_run("sweep", "embedded", {})
    heatmap = store.create_run("similarity", "x", {}, cache_key="fp1|abc", owner=B)
    store.add_visitor(heatmap, A)  # B computed it, A asked for the same and was shown it
    assert [r.id for r in page_runs(store, "heal", A, model="embedded")] == [mine]
    assert [r.id for r in page_runs(store, "heal", None, model=model_name("embedded"))] == [theirs, mine]  # the operator
    assert first_run(store, "sweep", A) is None and first_run(store, "sweep", None).id == cli
    assert first_run(store, "similarity", A, fingerprint="fp1").id == heatmap
    assert first_run(store, "similarity", A, fingerprint="fp2") is None


def test_a_new_visitor_opens_on_the_defaults_and_never_sees_an_upload_path(served_room, embedded):
    uploads = explorer_home() / "uploads"
    uploads.mkdir(parents=True, exist_ok=True)
    upload = uploads / "0123456789ab-garbage.txt"
    upload.write_text("\n\n".join(f"Document {i} says something about the weather in town number {i}." * 3 for i in range(8)))
    store = Store()
    run_id, _, _ = cached_distances(embedded, str(upload), 3, 24, 2, store)
    store.add_visitor(run_id, A)
    settings = {"model": {"source": "embedded"}, "start": 20, "n": 2, "heal": {"source": str(upload)}}
    store.create_run("heal", embedded.name, settings, status="done", owner=A)

    stranger = visit("pages/similarity.py", B)
    assert not [c for c in stranger.caption if "Showing similarity run" in seen(c.value)]
    assert stranger.session_state["sim_source"] != "Local file path" and "sim_path" not in stranger.session_state
    assert not any(str(uploads) in text for text in texts(stranger))
    heal_page = visit("pages/prune_heal.py", B)
    assert "No healing run for this model yet." in [c.value for c in heal_page.caption]

    runs = visit("pages/runs.py", B)
    runs.selectbox(key="runs_selected").set_value(run_id).run()
    shown = texts(runs)
    assert any("0123456789ab-garbage.txt" in text for text in shown)  # listed by its name, on the Runs page only
    assert not any(str(uploads) in text for text in shown)
    assert str(uploads) not in run_json(store.get_run(run_id), [], paths=False) and A not in run_json(store.get_run(run_id), [])

    owner = visit("pages/similarity.py", A)  # the visitor who computed it comes back (a reload keeps the key)
    assert any(f"Showing similarity run #{run_id}" in seen(c.value) for c in owner.caption)
    assert owner.session_state["sim_source"] == "Upload a file"  # never the server path in a text box


def test_hide_paths_keeps_names_and_hub_ids():
    settings = {"source": "/srv/explorer/uploads/abc-notes.txt", "model": {"source": "Qwen/Qwen2.5-0.5B"},
                "texts": ["~/private/a.jsonl", "embedded"], "steps": 3}
    assert hide_paths(settings) == {"source": "abc-notes.txt", "model": {"source": "Qwen/Qwen2.5-0.5B"},
                                    "texts": ["a.jsonl", "embedded"], "steps": 3}
    error = "Text file not found: /srv/explorer/uploads/abc-x.txt; see ~/logs/1.log or https://hf.co/org/model."
    assert hide_paths(error) == "Text file not found: abc-x.txt; see 1.log or https://hf.co/org/model."


# Who may cancel and delete.

def test_only_the_visitor_who_started_a_job_or_the_operator_cancels_it(store):
    job = store.create_run("sweep", "m", {}, status="queued", owner=A)
    for visitor in (B, None):
        with pytest.raises(ExplorerError, match="python -m explorer cancel RUN_ID"):
            jobs.cancel_as(store, job, ROOM, visitor)
    assert store.get_run(job).status == "queued"
    assert jobs.cancel_as(store, job, ROOM, A) and store.get_run(job).status == "cancelled"
    cli = store.create_run("sweep", "m", {}, status="running")  # a CLI run: no visitor owns it
    with pytest.raises(ExplorerError):
        jobs.cancel_as(store, cli, ROOM, A)
    assert jobs.cancel_as(store, cli, LOCAL, None) and store.get_run(cli).status == "cancelled"  # loopback: the operator


def test_a_student_sees_no_cancel_on_the_teachers_job(served_room):
    store = Store()
    demo = store.create_run("sweep", "m", {"model": "embedded"}, status="queued", owner=A)
    student = visit("pages/runs.py", B)
    student.selectbox(key="runs_selected").set_value(demo).run()
    assert not [b for b in student.button if b.key == "runs_cancel"]
    assert any("only they, or the operator" in seen(c.value) for c in student.caption)
    teacher = visit("pages/runs.py", A)
    teacher.selectbox(key="runs_selected").set_value(demo).run()
    teacher.button(key="runs_cancel").click().run()
    assert store.get_run(demo).status == "cancelled"


def test_the_operator_cancels_any_run_from_the_command_line(tmp_path):
    store = Store(tmp_path / "store.sqlite")
    demo = store.create_run("sweep", "m", {}, status="queued", owner=A)
    done = subprocess.run([sys.executable, "-m", "explorer", "cancel", str(demo), "--store", str(store.path)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == f"run {demo} (sweep) cancelled", done.stderr
    assert store.get_run(demo).status == "cancelled"
    again = subprocess.run([sys.executable, "-m", "explorer", "cancel", str(demo), "--store", str(store.path)], cwd=REPO,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and again.stderr.strip().splitlines() == [
        f"error: Run {demo} (sweep) is already cancelled: nothing to cancel."]


def test_visitors_delete_only_their_own_runs(store):
    room = server_policy("0.0.0.0", {ALLOW_DELETE: "1"})
    theirs = store.get_run(store.create_run("similarity", "m", {}, status="done", owner=A))
    with pytest.raises(ExplorerError, match="only the runs they started"):
        delete_run(store, theirs, room, [], B)
    delete_run(store, theirs, room, [], A)
    assert not store.list_runs()


# User-given text is plain text.

def test_plain_leaves_no_markdown():
    j = "\u2060"  # no autolink: a word joiner inside "://", "www." and before "@"
    assert plain(CRAFTED) == (rf"\[click me\]\(https\:{j}\/\/evil\.example\/x\) \!\[\]\(https\:{j}\/\/evil\.example\/t\.png\) "
                              rf"\:red\[x\] www{j}\.evil\.example")
    assert plain("mail me@evil.example") == rf"mail me{j}\@evil\.example"
    assert seen(plain(CRAFTED)) == CRAFTED and plain("a\nb") == "a b"


def test_a_crafted_model_name_is_plain_text_on_the_runs_page():
    store = Store()
    run_id = store.create_run("classify", CRAFTED, {"model": CRAFTED, "task": "sst2", "modes": ["icl"]}, status="failed")
    store.update_run(run_id, error=f"Could not load '{CRAFTED}'")
    at = visit("pages/runs.py")
    at.selectbox(key="runs_selected").set_value(run_id).run()
    markdown = [e.value for kind in ("markdown", "caption", "error") for e in at.get(kind)]
    assert any(CRAFTED in seen(value) for value in markdown)
    assert not any("](" in value.replace("\\]\\(", "") for value in markdown)  # no link or image left to render

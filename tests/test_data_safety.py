"""Data safety (issue 20): a model is never written over itself; every CLI output is written whole or
not at all, with one sentence on a full disk; the Runs page deletes only what a run wrote, and only
when asked; a run the form cannot show still displays; a computation a browser abandons is stored,
not failed; the first page loads after a restart import nothing lazily across threads."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from explorer.cli import main
from explorer.core.files import write_json
from explorer.export.folder import save_model
from explorer.lm.save import written_files
from explorer.state.store import Store
from explorer.surgery.heal import HealConfig
from explorer.surgery.prune import prune_block
from explorer.views.runs import delete_files, run_files
from tests.screen import seen

REPO = Path(__file__).resolve().parents[1]


def cli_error(capsys, *argv: str) -> str:
    assert main(list(argv)) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    return line


@pytest.fixture()
def model_copy(tmp_path, tiny_llama_dir) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(tiny_llama_dir, folder)
    return folder


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("command, out", [
    (["prune", "--start", "1", "--n", "1"], "."),
    (["prune", "--start", "1", "--n", "1"], "sub/pruned"),
    (["heal", "--start", "1", "--n", "1", "--steps", "1"], "."),
], ids=["prune into the model", "prune inside the model", "heal into the model"])
def test_out_is_never_the_model_itself(command, out, model_copy, capsys):
    before = snapshot(model_copy)
    line = cli_error(capsys, *command, "--model", str(model_copy), "--out", str(model_copy / out))
    assert line.startswith(f"error: --out {model_copy / out} is the --model folder {model_copy}")
    assert "overwrite the model" in line and snapshot(model_copy) == before


WRITE_BIG = """
import sys
from explorer.core.errors import ExplorerError
from explorer.core.files import write_json
try:
    write_json(sys.argv[1], {"x": "y" * 3_000_000})
except ExplorerError as exc:
    print(exc)
"""


def test_a_full_disk_leaves_the_old_file_and_says_so(tmp_path, full_disk):
    target = tmp_path / "out.json"
    write_json(target, {"before": 1})
    done = subprocess.run([sys.executable, "-c", WRITE_BIG, str(target)], cwd=REPO, capture_output=True, text=True,
                          preexec_fn=full_disk, timeout=120)
    assert done.stdout.strip() == f"Could not write {target} (the disk is full); nothing was written there: free some space or choose another place.", done.stderr
    assert json.loads(target.read_text()) == {"before": 1} and [p.name for p in tmp_path.iterdir()] == ["out.json"]


@pytest.mark.slow
def test_similarity_on_a_full_disk_is_one_sentence_and_no_half_file(tmp_path, full_disk):
    """The reported case: the work done (here: cached), then the 1.2 MB JSON refused by the disk."""
    out = tmp_path / "sim.json"
    command = ["similarity", "--samples", "160", "--seq-len", "16", "--out", str(out)]
    assert main(command) == 0
    before = out.read_bytes()
    assert len(before) > 2**20  # more than the full disk lets through
    done = subprocess.run([sys.executable, "-m", "explorer", *command], cwd=REPO, capture_output=True, text=True,
                          preexec_fn=full_disk, timeout=600)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (f"error: Could not write {out} (the disk is full); nothing was written "
                                                    "there: free some space or choose another place.")
    assert out.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["sim.json"]


def heal_run_with_folder(store: Store, tiny_llama, folder: Path) -> int:
    """A CLI heal's run whose --out folder also holds the user's own files."""
    pruned = prune_block(tiny_llama, 1, 1)
    record = {"kind": "heal", "model": "tiny", "block": {"start": 1, "n": 1, "num_layers": 4}, "heal": HealConfig().to_json()}
    save_model(pruned.loaded, folder, "tiny", pruned.block, record)
    run_id = store.create_run("heal", "tiny", {"model": {"source": "tiny"}, "start": 1, "n": 1, "heal": HealConfig().to_json()})
    store.update_run(run_id, status="done", result={**record, "folder": str(folder)})
    return run_id


def test_deleting_a_run_deletes_only_what_it_wrote(tmp_path, tiny_llama):
    store = Store(tmp_path / "store.sqlite")
    folder = tmp_path / "my-models"
    folder.mkdir()
    (folder / "notes.txt").write_text("the user's own file")
    (folder / "other-model").mkdir()
    run_id = heal_run_with_folder(store, tiny_llama, folder)
    files = run_files(store, store.get_run(run_id))
    assert {p.name for p in files} == {p.name for p in written_files(folder)} >= {"config.json", "run.json", "mergekit.yaml"}
    delete_files(files)
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt", "other-model"]
    alone = heal_run_with_folder(store, tiny_llama, tmp_path / "alone")  # a folder of its own goes when emptied
    delete_files(run_files(store, store.get_run(alone)))
    assert not (tmp_path / "alone").exists()


def test_the_runs_page_deletes_files_only_when_asked(tmp_path, tiny_llama):
    store = Store()
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    first, second = heal_run_with_folder(store, tiny_llama, folder), heal_run_with_folder(store, tiny_llama, tmp_path / "out2")
    at = AppTest.from_file("../app.py", default_timeout=120)
    at.run()
    at.switch_page("pages/runs.py").run()
    for run_id, tick in ((first, False), (second, True)):
        at.selectbox(key="runs_selected").set_value(run_id).run()
        at.button(key="runs_delete").click().run()
        assert at.checkbox(key="runs_delete_files").value is False  # off unless asked
        if tick:
            at.checkbox(key="runs_delete_files").check().run()
        at.button(key="runs_delete_yes").click().run()
        assert not at.exception
    assert (folder / "config.json").exists() and (folder / "notes.txt").exists()  # the first: only the run deleted
    assert not (tmp_path / "out2").exists()


def test_a_run_the_form_cannot_show_still_displays(tmp_path, embedded):
    """A CLI heal with --text-file: the page's text choice has no such entry (it crashed every new session)."""
    text = tmp_path / "good.txt"
    text.write_text("One document.\n\nAnother document.")
    heal = HealConfig(source=str(text), steps=3).to_json()
    settings = {"model": {"source": "embedded"}, "start": 20, "n": 2, "allow_final": False, "heal": heal}
    store = Store()
    run_id = store.create_run("heal", "embedded", settings, status="done")
    try:
        at = AppTest.from_file("../app.py", default_timeout=180)
        at.run()
        at.switch_page("pages/prune_heal.py").run()
        assert not at.exception, at.exception
        assert at.selectbox(key="ph_source").value == str(text)
        assert any(f"Showing heal run #{run_id}" in seen(c.value) for c in at.caption)
    finally:
        store.delete_run(run_id)


RACE = """
import importlib, sys, threading
names = sys.argv[1:]
barrier, failures = threading.Barrier(len(names)), []
def load(name):
    barrier.wait()
    try:
        importlib.import_module(name)
        from transformers import AutoModelForCausalLM, AutoTokenizer  # what the report's ImportError named
    except ImportError as exc:
        failures.append(f"{name}: {exc}")
threads = [threading.Thread(target=load, args=(name,)) for name in names]
[t.start() for t in threads]
[t.join() for t in threads]
print(failures or "ok")
"""


@pytest.mark.slow
def test_first_imports_after_a_restart_do_not_race():
    """Sessions of a fresh server import the pages' modules from several threads at once; with every
    transformers name imported at module top (never inside a function) none can see a half-made module."""
    modules = ["pages.panels.model", "explorer.kinds", "explorer.views.preview", "explorer.lm.stream",
               "explorer.surgery.heal", "explorer.experiments.classify"]
    for _ in range(2):  # the report: 1 of 2 restarts
        done = subprocess.run([sys.executable, "-c", RACE, *modules], cwd=REPO, capture_output=True, text=True, timeout=600)
        assert done.stdout.strip() == "ok", done.stdout + done.stderr

"""Pushing to the Hugging Face hub (explorer.export.hub), tested up to the upload call: no hub is
reachable here, so the plan (which files go where) is checked exactly, and every way a push
cannot work fails fast with one sentence, before any model loads."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from explorer.core.errors import ExplorerError
from explorer.export.hub import check_repo_id, push_plan

REPO = Path(__file__).resolve().parents[1]


def _export(folder: Path) -> Path:
    folder.mkdir()
    for name, text in {"README.md": "---\ntags: [x]\n---\n", "config.json": "{}", "run.json": "{}",
                       "model.safetensors": "w" * 100, "sub/extra.txt": "x", ".model.gguf-partial-1": "half"}.items():
        (folder / name).parent.mkdir(exist_ok=True)
        (folder / name).write_text(text)
    return folder


def test_plan_lists_the_folder_and_a_gguf_outside_it(tmp_path):
    folder = _export(tmp_path / "pruned")
    (tmp_path / "pruned.gguf").write_bytes(b"g" * 50)
    plan = push_plan("me/smol-pruned", folder, (tmp_path / "pruned.gguf",))
    assert plan.repo_id == "me/smol-pruned"
    assert sorted(name for _, name in plan.files) == ["README.md", "config.json", "model.safetensors", "pruned.gguf",
                                                      "run.json", "sub/extra.txt"]  # no hidden scratch file
    assert all(Path(local).is_file() for local, _ in plan.files)
    written = ["README.md", "config.json", "run.json", "model.safetensors", "sub/extra.txt"]
    assert plan.total_bytes == sum((folder / name).stat().st_size for name in written) + 50
    assert "to https://huggingface.co/me/smol-pruned" in plan.describe()
    inside = folder / "model.gguf"
    inside.write_bytes(b"g")
    assert [name for _, name in push_plan("me/x", folder, (inside,)).files].count("model.gguf") == 1


def test_plan_refusals(tmp_path):
    folder = _export(tmp_path / "pruned")
    for bad in ("a b", "me/x/y", "../x", "me/", "-x", "me/x.", "a" * 97):
        with pytest.raises(ExplorerError, match="not a Hugging Face repo id"):
            check_repo_id(bad)
    assert check_repo_id(" name-only ") == "name-only"
    (tmp_path / "run.json").write_text("{}")
    with pytest.raises(ExplorerError, match="would overwrite the folder's own run.json"):
        push_plan("me/x", folder, (tmp_path / "run.json",))
    with pytest.raises(ExplorerError, match="does not exist"):
        push_plan("me/x", folder, (tmp_path / "missing.gguf",))
    (folder / "README.md").unlink()
    with pytest.raises(ExplorerError, match="has no model card"):
        push_plan("me/x", folder)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("env, message", [
    ({"HF_HUB_OFFLINE": "1", "HF_TOKEN": "hf_not_a_real_token"}, "switched off here (HF_HUB_OFFLINE=1)"),
    ({"HF_TOKEN": "", "HF_HOME": "EMPTY_HOME"}, "No Hugging Face token"),
    ({"HF_TOKEN": "hf_not_a_real_token", "HF_ENDPOINT": "http://127.0.0.1:PORT"}, "Cannot reach the Hugging Face hub"),
])
def test_push_fails_fast_before_any_model_loads(env, message, tmp_path):
    """prune --push-to-hub: one error line within seconds, and nothing written (the model never loaded)."""
    env = {k: v.replace("EMPTY_HOME", str(tmp_path / "hf")).replace("PORT", str(_closed_port())) for k, v in env.items()}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "explorer", "prune", "--model", "embedded", "--start", "20", "--n", "5",
                           "--out", str(tmp_path / "out"), "--push-to-hub", "me/smol-pruned"],
                          cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO), **env})
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 2 and len(errors) == 1 and message in errors[0], done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "out").exists()
    assert time.perf_counter() - started < 60  # the imports; a model load and prune would come on top

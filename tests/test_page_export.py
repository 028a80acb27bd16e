"""The Prune & heal page's export box (pages/panels/export.py) in-process (Streamlit AppTest), on a
served room: the mergekit YAML and the llama.cpp command side by side, Save with GGUF, and the Push
button only where the operator switched it on, failing in one sentence when the hub cannot be reached."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import huggingface_hub
import pytest
from streamlit import config

from explorer.core.policy import ALLOW_PUSH
from tests.screen import seen, small_prune_page


@pytest.fixture()
def served_room():
    config.set_option("server.address", "0.0.0.0")
    yield
    config.set_option("server.address", "127.0.0.1")


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_export_box_saves_a_gguf_and_pushes_only_when_allowed(embedded, served_room, monkeypatch):
    monkeypatch.delenv(ALLOW_PUSH, raising=False)
    at = small_prune_page()
    at.number_input(key="ph_start").set_value(20)
    at.number_input(key="ph_n").set_value(5)
    at.button(key="ph_prune").click().run()
    assert not at.exception and not at.error
    codes = [block.value for block in at.code]
    assert any("merge_method: passthrough" in text and "layer_range: [25, 30]" in text for text in codes)
    assert any("llama-quantize --prune-layers 20,21,22,23,24 SmolLM2-135M-Instruct.Q4_1.gguf" in text for text in codes)
    assert not [b for b in at.button if b.label == "Push to hub"]  # nothing to push before a save

    at.checkbox(key="ph_with_gguf").check()
    at.button(key="ph_save").click().run()
    assert not at.exception and not at.error
    saved = Path(at.session_state["ph_pruned"]["saved"])
    assert json.loads((saved / "run.json").read_text())["gguf"]["method"] == "direct"
    assert (saved / "model.gguf").is_file() and (saved / "README.md").is_file()
    assert any("model.gguf" in seen(info.value) for info in at.info)
    assert at.get("download_button")  # the mergekit YAML and the GGUF
    assert not [b for b in at.button if b.label == "Push to hub"]
    assert any(f"{ALLOW_PUSH}=1" in caption.value for caption in at.caption)

    monkeypatch.setenv(ALLOW_PUSH, "1")
    at.run()
    assert [b for b in at.button if b.label == "Push to hub"]
    at.text_input(key="ph_repo").set_value("not a repo")
    at.button(key="ph_push").click().run()
    assert any("not a Hugging Face repo id" in error.value for error in at.error)
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    at.text_input(key="ph_repo").set_value("me/smol-pruned")
    at.button(key="ph_push").click().run()
    assert any("Cannot reach the Hugging Face hub" in error.value for error in at.error)
    assert not at.exception

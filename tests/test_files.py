"""Files a run leaves: models save in the dtype picked (bf16 halves fp32), the disk each run
uses is measured, and deleting a run can delete its files."""

from __future__ import annotations

import json

import pytest
import torch

from explorer.core.errors import ExplorerError
from explorer.lm.save import save_pruned
from explorer.state.files import log_path, run_folder
from explorer.views.runs import delete_files, disk_usage, format_bytes, run_files


def test_bf16_halves_the_model_and_reloads_with_the_same_predictions(tiny_llama, tmp_path):
    from transformers import AutoModelForCausalLM

    full = save_pruned(tiny_llama, tmp_path / "fp32", {"kind": "test"}, "fp32")
    half = save_pruned(tiny_llama, tmp_path / "bf16", {"kind": "test"}, "bf16")
    fp16 = save_pruned(tiny_llama, tmp_path / "fp16", {"kind": "test"}, "fp16")
    for folder in (half, fp16):
        ratio = disk_usage(folder / "model.safetensors") / disk_usage(full / "model.safetensors")
        assert 0.49 < ratio < 0.51
    assert json.loads((half / "config.json").read_text())["dtype"] == "bfloat16"
    assert next(tiny_llama.model.parameters()).dtype == torch.float32  # the caller's model is untouched
    reloaded = AutoModelForCausalLM.from_pretrained(half)
    assert next(reloaded.parameters()).dtype == torch.bfloat16
    ids = torch.tensor([[1, 5, 9, 13, 2]])
    with torch.no_grad():
        expected = tiny_llama.model(ids).logits
        got = reloaded(ids).logits.float()
    assert torch.equal(got.argmax(-1), expected.argmax(-1))
    assert torch.allclose(got, expected, atol=0.05)
    with pytest.raises(ExplorerError, match="Unknown weight type 'int3'"):
        save_pruned(tiny_llama, tmp_path / "bad", {}, "int3")


def test_disk_use_of_a_run_and_deleting_its_files(store, tmp_path):
    run_id = store.create_run("heal", "tiny", {"start": 1, "n": 1}, status="done")
    folder = run_folder(store, run_id)
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_bytes(b"x" * 1000)
    (folder / "sub" / "weights.bin").write_bytes(b"y" * 2500)
    log_path(store, run_id).write_bytes(b"z" * 500)
    elsewhere = tmp_path / "my-model"  # a folder the result names (e.g. a CLI heal's --out), shared with other files
    elsewhere.mkdir()
    (elsewhere / "config.json").write_bytes(b"{}")
    (elsewhere / "notes.txt").write_bytes(b"the user's")
    store.update_run(run_id, result={"folder": str(elsewhere)})
    assert run_files(store, store.get_run(run_id)) == [folder, log_path(store, run_id)]  # what it wrote there: unknown
    (elsewhere / "run.json").write_text('{"files": ["config.json", "run.json"]}')  # as save_pruned records it
    run = store.get_run(run_id)

    files = run_files(store, run)
    assert files == [folder, log_path(store, run_id), elsewhere / "config.json", elsewhere / "run.json"]
    assert [disk_usage(p) for p in files] == [3500, 500, 2, 38]
    assert run_files(store, store.get_run(store.create_run("similarity", "tiny", {}))) == []
    assert delete_files(files) == 4040
    assert not folder.exists() and not log_path(store, run_id).exists()
    assert sorted(p.name for p in elsewhere.iterdir()) == ["notes.txt"]


@pytest.mark.parametrize("size, text", [(0, "0 B"), (999, "999 B"), (1000, "1.0 kB"), (812_345, "812 kB"),
                                        (436_000_000, "436 MB"), (1_234_000_000, "1.2 GB")])
def test_sizes_read_like_du(size, text):
    assert format_bytes(size) == text

"""A saved pruned model reloads with plain transformers and computes the same logits; the
mergekit YAML names exactly the kept layers; the CLI writes all of it or fails in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from explorer.analysis.similarity import compute_distances
from explorer.analysis.strategies import Context, choose_layers
from explorer.export.mergekit import EMBEDDED_HUB_ID, mergekit_yaml
from explorer.lm.blocks import Block, check_block
from explorer.lm.data import make_samples
from explorer.lm.save import save_pruned
from explorer.surgery.prune import prune_block

REPO = Path(__file__).resolve().parents[1]
TEXT = "Israeli troops moved into the West Bank town overnight, witnesses said."


def _logits(model, tokenizer) -> torch.Tensor:
    ids = tokenizer(TEXT, return_tensors="pt").input_ids
    with torch.no_grad():
        return model(input_ids=ids).logits


def _reload(folder: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(folder)


def test_saved_pruned_model_reloads_with_same_logits(embedded, tmp_path):
    pruned = prune_block(embedded, 10, 4).loaded
    record = {"model": "embedded", "block": [10, 4]}
    folder = save_pruned(pruned, tmp_path / "out", record)
    model, tokenizer = _reload(folder)
    assert model.config.num_hidden_layers == 26 and len(model.model.layers) == 26
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    written = json.loads((folder / "run.json").read_text())
    assert written == {**record, "files": sorted(p.name for p in folder.iterdir())}  # the record, and every file written
    assert tokenizer(TEXT).input_ids == embedded.tokenizer(TEXT).input_ids
    torch.testing.assert_close(_logits(model, tokenizer), _logits(pruned.model, embedded.tokenizer), atol=1e-5, rtol=1e-5)


def test_peft_model_is_merged_on_save_and_stays_live(tiny_llama, tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model

    from explorer.lm.models import LoadedModel

    pruned = prune_block(tiny_llama, 1, 2).loaded
    torch.manual_seed(0)
    # init_lora_weights=False: random B, so the adapter really changes the output.
    adapted = get_peft_model(pruned.model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    adapted.eval()
    with adapted.disable_adapter():
        base_logits = _logits(adapted, tiny_llama.tokenizer)
    adapted_logits = _logits(adapted, tiny_llama.tokenizer)
    assert not torch.allclose(base_logits, adapted_logits, atol=1e-3)

    healed = LoadedModel(adapted, pruned.tokenizer, pruned.name, pruned.fingerprint)
    folder = save_pruned(healed, tmp_path / "healed", {})
    assert not (folder / "adapter_config.json").exists()
    model, tokenizer = _reload(folder)
    assert len(model.model.layers) == 2
    torch.testing.assert_close(_logits(model, tokenizer), adapted_logits, atol=1e-5, rtol=1e-5)
    assert isinstance(adapted, PeftModel)  # the live adapter was not merged away
    torch.testing.assert_close(_logits(adapted, tiny_llama.tokenizer), adapted_logits, atol=0, rtol=0)


def _ranges(text: str) -> list[list[int]]:
    config = yaml.safe_load(text)
    assert config["merge_method"] == "passthrough"
    assert all(len(s["sources"]) == 1 for s in config["slices"])
    return [s["sources"][0]["layer_range"] for s in config["slices"]]


@pytest.mark.parametrize(
    ("block", "expected"),
    [
        (Block(10, 4, 30), [[0, 10], [14, 30]]),
        (Block(0, 3, 30), [[3, 30]]),
        (Block(12, 18, 30), [[0, 12]]),  # top-cut: keep [0, 12)
        (Block(0, 0, 30), [[0, 30]]),
    ],
)
def test_mergekit_yaml_slices(block, expected):
    text = mergekit_yaml("meta-llama/Llama-2-7b-hf", 30, block, dtype="float16")
    assert _ranges(text) == expected
    kept = [i for a, b in _ranges(text) for i in range(a, b)]
    assert kept == block.kept
    config = yaml.safe_load(text)
    assert config["dtype"] == "float16"
    assert {s["sources"][0]["model"] for s in config["slices"]} == {"meta-llama/Llama-2-7b-hf"}


def test_mergekit_yaml_embedded_and_paths():
    text = mergekit_yaml("embedded", 30, check_block(20, 5, 30))
    assert yaml.safe_load(text)["slices"][0]["sources"][0]["model"] == EMBEDDED_HUB_ID
    assert f"GGUF of {EMBEDDED_HUB_ID}" in text and yaml.safe_load(text)["dtype"] == "bfloat16"
    odd = "/tmp/my: model #2"
    assert yaml.safe_load(mergekit_yaml(odd, 4, Block(1, 1, 4)))["slices"][1]["sources"][0]["model"] == odd


def _cli(*args: str, preexec_fn=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "explorer", "prune", *args], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=300, preexec_fn=preexec_fn,
    )


def test_cli_prune_writes_folder(embedded, tmp_path):
    out = tmp_path / "pruned"
    done = _cli("--model", "embedded", "--start", "20", "--n", "5", "--out", str(out))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert "layers 20-24 of 30" in lines[0] and "llama-quantize --prune-layers 20,21,22,23,24" in lines[-1]
    assert (out / "README.md").is_file()
    record = json.loads((out / "run.json").read_text())
    assert record["block"]["removed"] == [20, 21, 22, 23, 24]
    assert record["params_before"] - record["params_after"] == sum(
        p.numel() for i in range(20, 25) for p in embedded.model.model.layers[i].parameters()
    )
    assert _ranges((out / "mergekit.yaml").read_text()) == [[0, 20], [25, 30]]
    model, tokenizer = _reload(out)
    expected = prune_block(embedded, 20, 5).loaded.model
    torch.testing.assert_close(_logits(model, tokenizer), _logits(expected, embedded.tokenizer), atol=1e-5, rtol=1e-5)


def test_cli_prune_similarity_strategy(tiny_llama, tiny_llama_dir, tmp_path):
    out = tmp_path / "sim"
    done = _cli("--model", str(tiny_llama_dir), "--strategy", "similarity", "--n", "2",
                "--samples", "4", "--seq-len", "32", "--out", str(out))
    assert done.returncode == 0, done.stderr
    samples = make_samples(tiny_llama.tokenizer, "embedded", 4, 32, "train")
    expected = choose_layers("similarity", 2, Context(4, compute_distances(tiny_llama, samples.ids)))
    record = json.loads((out / "run.json").read_text())
    assert record["strategy"] == "similarity" and record["block"]["start"] == expected.start


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--start", "3", "--n", "2"], "does not fit"),
        (["--n", "2"], "--strategy"),
    ],
)
def test_cli_prune_bad_block_exits_2_with_one_line(tiny_llama_dir, tmp_path, args, message):
    done = _cli("--model", str(tiny_llama_dir), *args, "--out", str(tmp_path / "never"))
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "never").exists()


def test_cli_prune_on_a_full_disk_keeps_the_folder_as_it_was(embedded, tmp_path, full_disk):
    """The weights cannot be written: one error line, no traceback, no half-written model in the
    folder (which keeps what it held) and no scratch folder left beside it."""
    out = tmp_path / "pruned"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    done = _cli("--model", "embedded", "--start", "20", "--n", "5", "--out", str(out), preexec_fn=full_disk)
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Could not write the pruned model" in errors[0] and "Traceback" not in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pruned"]
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"] and (out / "notes.txt").read_text() == "mine"

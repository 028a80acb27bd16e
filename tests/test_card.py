"""The model card of every exported folder (explorer.export.card): front matter the hub reads, the
removed layers, the recipe, the evaluations with n and intervals, a command that really remakes
the model, and no way for a name to break the YAML or inject markdown."""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

from explorer.export.card import base_model, code, front_matter, model_card
from explorer.export.mergekit import EMBEDDED_HUB_ID

REPO = Path(__file__).resolve().parents[1]


def _split(card: str) -> tuple[dict, str]:
    match = re.match(r"---\n(.*?)\n---\n(.*)", card, re.S)
    assert match, card[:200]
    return yaml.safe_load(match[1]), match[2]


def _record(**extra) -> dict:
    return {"kind": "prune", "model": "embedded", "model_name": "SmolLM2-135M-Instruct (embedded GGUF)",
            "block": {"start": 20, "n": 5, "num_layers": 30, "removed": [20, 21, 22, 23, 24]},
            "params_before": 134_515_008, "params_after": 116_800_000, "strategy": "manual", "similarity": None,
            "repair": {"method": "none"}, "dtype": "bf16", **extra}


def test_embedded_card_front_matter_and_body():
    meta, body = _split(model_card(_record(), "out"))
    assert meta["base_model"] == EMBEDDED_HUB_ID and meta["license"] == "apache-2.0"
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "text-generation"
    assert {"layer-pruning", "pruned"} <= set(meta["tags"]) and "gguf" not in meta["tags"]
    assert "Removed decoder layers (0-based): 20, 21, 22, 23, 24." in body
    assert "[0, 20), [25, 30)" in body  # the kept layers as mergekit layer_range slices
    assert "llama-quantize --prune-layers 20,21,22,23,24" in body
    assert "No evaluation was recorded" in body
    for library in ("torch", "transformers", "gguf", "layer-pruning-explorer"):
        assert re.search(rf"\| {re.escape(library)} \| \S+ \|", body)


def test_names_cannot_break_the_yaml_or_inject_markdown(tmp_path):
    evil = "x`|\n---\nlicense: mit\n# <script>alert(1)</script> ![img](http://e/x.png) | y"
    folder = tmp_path / "base"
    folder.mkdir()
    (folder / "README.md").write_text("---\nlicense: 'gpl: \"3\"'\nbase_model: [org/base-model]\n---\nhi\n")
    (folder / "config.json").write_text("{}")
    record = _record(model=str(folder), model_name=evil, similarity={"source": evil, "samples": 4, "seq_len": 8},
                     strategy="similarity", quick_eval={evil: {"val_loss": 1.0, "task": evil, "accuracy": 0.5, "ci_low": 0.2,
                                                               "ci_high": 0.8, "chance": 0.25, "predictions": {"a": "A"}}})
    meta, body = _split(model_card(record, "out"))
    assert meta["license"] == 'gpl: "3"' and meta["base_model"] == "org/base-model"  # read from the folder's card
    assert set(meta) == {"base_model", "license", "library_name", "pipeline_tag", "tags"}
    assert "Calibration: 4 documents of 8 tokens from ``x`| --- license: mit" in body
    outside_code = re.sub(r"(`+).*?\1", "", re.sub(r"^(`{3,})\w*\n.*?\n\1$", "", body, flags=re.S | re.M))
    assert "<script>" not in outside_code and "![img]" not in outside_code and "\n---\n" not in outside_code
    assert outside_code.count("\n# ") == 1 and body.startswith("\n# ")  # one title, the name inside it as code
    table = [line for line in body.splitlines() if line.startswith("| `")]
    assert len(table) == 1 and table[0].count(" | ") == 6  # the pipes in the name are escaped: 7 cells
    assert code("a`b") == "``a`b``" and code("`x`") == "`` `x` ``" and code("a\nb") == "`a b`"


def test_base_model_and_licence_sources(tmp_path):
    assert base_model("embedded") == (EMBEDDED_HUB_ID, "apache-2.0")
    assert base_model("some-org/some-model-not-cached") == ("some-org/some-model-not-cached", None)
    (tmp_path / "m.gguf").write_bytes(b"")
    assert base_model(str(tmp_path / "m.gguf")) == (None, None)
    assert base_model(str(tmp_path)) == (None, None)  # a folder without a card
    meta, body = _split(model_card(_record(model=str(tmp_path)), "out"))
    assert "license" not in meta and "base_model" not in meta and "unknown (check the base model)" in body
    (tmp_path / "README.md").write_text("no front matter")
    assert front_matter(tmp_path / "README.md") == {}


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "explorer", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "PYTHONPATH": str(REPO)})


def _command(card: str) -> list[str]:
    block = re.search(r"## Reproduce\n\n(`{3,})bash\n(.*?)\n\1", card, re.S)
    return shlex.split(block[2])


def test_the_cards_command_remakes_the_model(tiny_llama_dir, tmp_path):
    """prune with a strategy and a linear repair (fitted on 4 calibration documents) writes a card whose
    command, run again, gives the same weights; the card names the strategy and the fit."""
    first = tmp_path / "first"
    done = _cli("prune", "--model", str(tiny_llama_dir), "--strategy", "simple", "--n", "2", "--samples", "4",
                "--seq-len", "32", "--batch-size", "2", "--ridge", "0.01", "--repair", "linear", "--out", str(first))
    assert done.returncode == 0, done.stderr
    card = (first / "README.md").read_text()
    meta, body = _split(card)
    assert "linear-repair" in meta["tags"] and "Strategy: `simple`" in body
    assert "4 calibration documents of 32 tokens" in body and "ridge 0.01" in body and "held-out relative residual" in body
    command = _command(card)
    assert command[:4] == ["python", "-m", "explorer", "prune"] and command[-2:] == ["--out", "first"]
    again = tmp_path / "again"
    done = _cli(*command[3:-1], str(again))
    assert done.returncode == 0, done.stderr
    a, b = load_file(first / "model.safetensors"), load_file(again / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((again / "run.json").read_text())["block"] == json.loads((first / "run.json").read_text())["block"]


def test_healed_card_has_the_recipe_and_evaluations_with_n(tiny_llama_dir, tmp_path):
    """A heal's card: the LoRA recipe, a row per evaluation with its n (questions scored) and 95%
    interval, and a command whose options parse back to the same HealConfig."""
    from explorer.cli import COMMANDS, main
    from explorer.core.options import given
    from explorer.surgery.heal import HealConfig

    out = tmp_path / "healed"
    assert main(["heal", "--model", str(tiny_llama_dir), "--device", "cpu", "--start", "1", "--n", "2", "--steps", "2",
                 "--batch-size", "2", "--seq-len", "32", "--eval-every", "1", "--eval-limit", "3", "--val-samples", "2",
                 "--rank", "4", "--out", str(out), "--gguf", str(tmp_path / "healed.gguf"), "--gguf-type", "f32"]) == 0
    from transformers import AutoModelForCausalLM, AutoTokenizer

    healed = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    converted = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="healed.gguf", dtype=torch.float32).eval()
    ids = AutoTokenizer.from_pretrained(out)("Paris is the capital of", return_tensors="pt").input_ids
    with torch.no_grad():  # heal --gguf converts the merged, healed weights
        torch.testing.assert_close(converted(ids).logits, healed(ids).logits, atol=1e-5, rtol=1e-5)
    record = json.loads((out / "run.json").read_text())
    meta, body = _split((out / "README.md").read_text())
    assert {"lora", "healed"} <= set(meta["tags"])
    assert "Healed with LoRA (merged into the weights): rank 4" in body and "2 steps of 2 documents x 32 tokens" in body
    rows = [line for line in body.splitlines() if line.startswith("| `")]
    assert len(rows) == len(record["metrics"]) == 3
    for row, metrics in zip(rows, record["metrics"].values()):
        cells = [cell.strip() for cell in row.strip("|").split(" | ")]
        assert cells[3] == f"{metrics['accuracy']:.1%} [{metrics['ci_low']:.1%}, {metrics['ci_high']:.1%}]"
        assert cells[4] == "3"  # --eval-limit questions
    command = _command((out / "README.md").read_text())
    parser = argparse.ArgumentParser()
    COMMANDS["heal"][0](parser)
    args = parser.parse_args(command[4:])
    assert HealConfig(**given(HealConfig, args)).to_json() == record["heal"]
    assert (args.start, args.n, args.model) == (1, 2, str(tiny_llama_dir))


def test_the_cards_command_remakes_a_layer_set(tiny_llama_dir, tmp_path):
    """A set that is not one block (layers 0 and 2, layer 1's MLP) is named in the card's command by
    its indices, and the command run again saves the same weights and the same record."""
    first = tmp_path / "first"
    done = _cli("prune", "--model", str(tiny_llama_dir), "--layers", "0,2", "--mlp", "1", "--out", str(first))
    assert done.returncode == 0, done.stderr
    command = _command((first / "README.md").read_text())
    assert shlex.join(command).count("--layers 0,2 --mlp 1") == 1 and "--start" not in command
    again = tmp_path / "again"
    assert (done := _cli(*command[3:-1], str(again))).returncode == 0, done.stderr
    a, b = load_file(first / "model.safetensors"), load_file(again / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((again / "run.json").read_text())["block"] == json.loads((first / "run.json").read_text())["block"]

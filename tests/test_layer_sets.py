"""Any set of layers, not only a block: how a set is written and checked, that a pruned model without
a non-contiguous set computes what its kept layers compute by hand (config, layer_idx and per-layer
lists remapped), and that its export (one mergekit slice per kept range) reloads with stock
transformers with the same logits. Also the CLI's --layers / --attention / --mlp and strategies."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM

from explorer.core.errors import ExplorerError
from explorer.export.folder import save_prune
from explorer.export.mergekit import mergekit_yaml
from explorer.lm.blocks import Block, LayerSet, check_layer_set, parse_indices, recorded_layers
from explorer.lm.layers import pruned_view
from explorer.lm.models import LoadedModel
from explorer.surgery.prune import prune_layers
from tests.by_hand import llama_by_hand
from tests.families import tiny_family_model


def test_a_block_is_a_layer_set():
    block = Block(3, 2, 10)
    assert block == LayerSet((3, 4), 10) and hash(block) == hash(LayerSet((3, 4), 10)) and block.contiguous
    assert block.key == "3:2" and block.end == 5 and block.kept_ranges == [(0, 3), (5, 10)]
    scattered = LayerSet((7, 1, 2), 10)
    assert scattered.removed == (1, 2, 7) and not scattered.contiguous and scattered.span == "1-2, 7"
    assert scattered.kept_ranges == [(0, 1), (3, 7), (8, 10)] and scattered.key == "set:1,2,7"
    assert scattered.describe() == "layers 1-2, 7 of 10 (3 layers, 30% of the model)"
    with pytest.raises(ExplorerError, match="not one contiguous block"):
        scattered.as_block()
    both = LayerSet((), 10, attention=(4, 6), mlp=(4,))  # a layer without either sub-layer is the identity: removed
    assert both.removed == (4,) and both.attention == (6,) and both.mlp == () and both.start == 4
    assert recorded_layers({"removed": [1], "num_layers": 10, "sublayers": {"attention": [6]}}) == LayerSet((1,), 10, (6,))
    assert recorded_layers({"start": 2, "n": 3, "num_layers": 10}) == Block(2, 3, 10)  # a run.json from before sets


def test_sets_are_checked_in_one_sentence():
    assert parse_indices("3, 7-9,12") == (3, 7, 8, 9, 12)
    assert isinstance(check_layer_set([4, 3], 10), Block)  # a contiguous set comes back as the block it is
    for args, message in [(([3, 10], 10), "No layer 10"), (([2, 2], 10), "twice"), (([9], 10), "final layer"),
                          ((list(range(10)), 10, True), "at least one layer")]:
        with pytest.raises(ExplorerError, match=message):
            check_layer_set(*args)
    with pytest.raises(ExplorerError, match="3, 7-9"):
        parse_indices("three")


def test_non_contiguous_set_runs_its_kept_layers_by_hand(tiny_llama):
    layers = LayerSet((0, 2), 4)
    result = prune_layers(tiny_llama, layers)
    model = result.loaded.model
    assert model.config.num_hidden_layers == 2 and [l.self_attn.layer_idx for l in model.model.layers] == [0, 1]
    ids = tiny_llama.tokenizer("The capital of France is Paris, and the capital of Italy is").input_ids
    with torch.no_grad():
        got = model(torch.tensor([ids]), use_cache=False).logits[0]
    torch.testing.assert_close(got, llama_by_hand(tiny_llama.model, ids, [1, 3])[1], atol=1e-5, rtol=1e-5)
    kwargs = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    tokens = torch.tensor([ids])
    assert model.generate(tokens, use_cache=True, **kwargs).tolist() == model.generate(tokens, use_cache=False, **kwargs).tolist()
    assert tiny_llama.num_layers == 4  # the original keeps its layers


def test_per_layer_config_lists_follow_a_set():
    """qwen2's layer_types (sliding or full per layer) and max_window_layers are remapped for the kept layers."""
    model = tiny_family_model("qwen2", 64, num_hidden_layers=5, use_sliding_window=True, sliding_window=4, max_window_layers=3,
                              layer_types=["full_attention", "sliding_attention", "full_attention", "sliding_attention", "full_attention"])
    view = pruned_view(LoadedModel(model, None, "q", "q"), LayerSet((1, 3), 5))
    assert view.model.config.layer_types == ["full_attention"] * 3
    assert view.model.config.max_window_layers == 2  # kept layers 0 and 2 lay below 3
    ids = torch.randint(0, 64, (1, 12), generator=torch.Generator().manual_seed(0))
    kwargs = dict(max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert view.model.generate(ids, use_cache=True, **kwargs).tolist() == view.model.generate(ids, use_cache=False, **kwargs).tolist()


def test_export_of_a_set_reloads_with_stock_transformers(tiny_llama, tmp_path):
    layers = LayerSet((0, 2), 4)
    result = prune_layers(tiny_llama, layers)
    out = save_prune(result, tmp_path / "set", "tiny", {"strategy": "manual"})
    slices = [s["sources"][0]["layer_range"] for s in yaml.safe_load((out / "mergekit.yaml").read_text())["slices"]]
    assert slices == [[1, 2], [3, 4]]
    record = json.loads((out / "run.json").read_text())["block"]
    assert record["removed"] == [0, 2] and not record["contiguous"] and "sublayers" not in record
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = torch.tensor([tiny_llama.tokenizer("Police arrested two men on Tuesday.").input_ids])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, result.loaded.model(ids).logits, atol=1e-6, rtol=1e-6)


def test_mergekit_slices_of_sets_and_sublayers():
    text = mergekit_yaml("org/model", 10, LayerSet((2, 3, 7), 10, attention=(5,), mlp=(9,)))
    config = yaml.safe_load(text)
    ranges = [s["sources"][0]["layer_range"] for s in config["slices"]]
    assert ranges == [[0, 2], [4, 5], [5, 6], [6, 7], [8, 9], [9, 10]]
    scales = {tuple(s["sources"][0]["layer_range"]): s["sources"][0].get("parameters", {}).get("scale") for s in config["slices"]}
    assert scales[(5, 6)] == [{"filter": "o_proj", "value": 0.0}, {"value": 1.0}]
    assert scales[(9, 10)] == [{"filter": "down_proj", "value": 0.0}, {"value": 1.0}]
    assert sum(1 for v in scales.values() if v) == 2


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "explorer", "prune", *args], capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_cli_prunes_a_set_and_a_strategy_choice(tiny_llama_dir, tmp_path):
    done = _cli("--model", str(tiny_llama_dir), "--layers", "0,2", "--mlp", "1", "--out", str(tmp_path / "set"))
    assert done.returncode == 0, done.stderr
    record = json.loads((tmp_path / "set" / "run.json").read_text())
    assert record["block"]["removed"] == [0, 2] and record["block"]["sublayers"]["mlp"] == [1] and record["strategy"] == "manual"
    assert "zero weights" in done.stdout
    done = _cli("--model", str(tiny_llama_dir), "--strategy", "attention-drop", "--n", "2", "--samples", "3", "--seq-len", "16",
                "--out", str(tmp_path / "attn"))
    assert done.returncode == 0, done.stderr
    record = json.loads((tmp_path / "attn" / "run.json").read_text())
    assert len(record["block"]["sublayers"]["attention"]) == 2 and record["calibration"]["samples"] == 3


@pytest.mark.parametrize(("args", "message"), [(["--layers", "1", "--n", "2"], "--n goes with"),
                                               (["--strategy", "block-influence"], "--strategy needs --n"),
                                               (["--start", "1", "--layers", "2", "--n", "1"], "Give one of"),
                                               (["--strategy", "deepest", "--n", "1"], "Unknown strategy"),
                                               (["--layers", "1,9"], "No layer 9")])
def test_cli_bad_sets_exit_2_with_one_line(tiny_llama_dir, tmp_path, args, message):
    done = _cli("--model", str(tiny_llama_dir), *args, "--out", str(tmp_path / "never"))
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 2 and len(errors) == 1 and message in errors[0], done.stderr
    assert not (tmp_path / "never").exists()

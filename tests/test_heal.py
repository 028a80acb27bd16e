"""Healing on CPU: LoRA and QLoRA learn, leave the base weights alone, merge correctly, and
bad settings fail with one clear message."""

from __future__ import annotations

import copy
import dataclasses
import json
import subprocess
import sys

import pytest
import torch

from explorer.core.errors import ExplorerError
from explorer.evaluation.evaluate import quick_eval
from explorer.state.cache import cached_quick_eval
from explorer.surgery.heal import (
    HealConfig,
    heal,
    is_quantized,
    lora_targets,
    merge,
    train_adapter,
    training_batches,
    training_model,
)
from explorer.surgery.prune import prune_block

# One fixed batch, repeated: the loss on it must fall if the adapters learn anything.
TINY = dict(steps=6, batch_size=2, seq_len=32, train_samples=2, lr=2e-3, warmup_steps=0, eval_limit=2, val_samples=2)


def batch_loss(model, batch) -> float:
    input_ids, mask, labels = batch
    was_training = model.training
    model.eval()
    with torch.no_grad():
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels, use_cache=False).loss.item()
    model.train(was_training)
    return loss


def logits(model, batch) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=batch[0], attention_mask=batch[1], use_cache=False).logits


def base_weights(peft_model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in peft_model.named_parameters() if "lora_" not in name}


def test_lora_targets_are_every_linear_projection_in_the_layers(embedded):
    assert lora_targets(embedded.model) == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]


@pytest.mark.slow
def test_lora_learns_leaves_base_untouched_and_merges_exactly(embedded):
    pruned = prune_block(embedded, 20, 4).loaded
    pruned_snapshot = {k: v.clone() for k, v in pruned.model.state_dict().items()}
    config = HealConfig(**TINY, quantize=False).resolved("cpu")
    data = training_batches(pruned, config)
    peft_model = training_model(pruned, config)
    before = base_weights(peft_model)
    loss_before = batch_loss(peft_model, data[0])
    train_adapter(peft_model, data, config)
    loss_after = batch_loss(peft_model, data[0])
    assert loss_after < loss_before - 0.05, (loss_before, loss_after)
    after = base_weights(peft_model)
    assert before.keys() == after.keys() and len(before) > 0
    assert all(torch.equal(before[k], after[k]) for k in before), "a base weight changed during LoRA training"
    assert any(p.abs().sum() > 0 for n, p in peft_model.named_parameters() if "lora_B" in n)

    adapter_logits = logits(peft_model, data[0])
    merged = merge(peft_model, pruned)
    assert not any("lora_" in name for name, _ in merged.named_parameters())
    merged_logits = logits(merged, data[0])
    torch.testing.assert_close(merged_logits, adapter_logits, atol=2e-3, rtol=1e-3)
    assert (merged_logits - logits(pruned.model, data[0])).abs().max() > 1e-2
    assert all(torch.equal(v, pruned_snapshot[k]) for k, v in pruned.model.state_dict().items()), "heal changed its input"


def test_qlora_on_cpu_trains_an_nf4_base(tiny_llama):
    import bitsandbytes as bnb

    pruned = prune_block(tiny_llama, 1, 1).loaded
    config = HealConfig(**TINY, quantize=True).resolved("cpu")
    data = training_batches(pruned, config)
    peft_model = training_model(pruned, config)
    assert is_quantized(peft_model.get_base_model())
    quantized = [m for m in peft_model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(quantized) == 7 * 3 and all(m.weight.quant_state.quant_type == "nf4" for m in quantized)
    loss_before = batch_loss(peft_model, data[0])
    train_adapter(peft_model, data, config)
    assert batch_loss(peft_model, data[0]) < loss_before - 0.05
    merged = merge(peft_model, pruned)
    assert not is_quantized(merged) and merged.model.layers[0].self_attn.q_proj.weight.dtype == torch.float32
    assert (logits(merged, data[0]) - logits(pruned.model, data[0])).abs().max() > 1e-3


def lora_grads(peft_model, batch) -> dict[str, torch.Tensor]:
    peft_model.train()
    peft_model.zero_grad()
    input_ids, mask, labels = batch
    peft_model(input_ids=input_ids, attention_mask=mask, labels=labels, use_cache=False).loss.backward()
    return {n: p.grad.detach().float().clone() for n, p in peft_model.named_parameters() if p.grad is not None}


def test_qlora_gradients_match_the_dequantized_model_after_an_evaluation(tiny_llama):
    """QLoRA's adapter gradients equal those of an fp32 model holding the dequantized nf4 weights,
    also after an evaluation pass (which, unguarded, makes bitsandbytes switch to a CPU kernel
    without a backward)."""
    import bitsandbytes as bnb
    from peft import get_peft_model
    from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

    pruned = prune_block(tiny_llama, 1, 1).loaded
    config = HealConfig(**{**TINY, "dropout": 0.0, "steps": 2}, quantize=True).resolved("cpu")
    data = training_batches(pruned, config)
    peft_model = training_model(pruned, config)
    train_adapter(peft_model, data, config)  # B != 0, so every adapter matrix gets a gradient
    batch_loss(peft_model, data[0])  # an evaluation: eval mode, no gradients
    quantized = lora_grads(peft_model, data[0])

    reference_base = copy.deepcopy(pruned.model)
    adapter = dataclasses.replace(peft_model.peft_config["default"], base_model_name_or_path=reference_base.name_or_path)
    reference = get_peft_model(reference_base, adapter)
    set_peft_model_state_dict(reference, get_peft_model_state_dict(peft_model, save_embedding_layers=False))
    modules = dict(reference.named_modules())
    for name, module in peft_model.named_modules():
        if isinstance(module, bnb.nn.Linear4bit):
            modules[name].weight.data = bnb.functional.dequantize_4bit(module.weight.data, module.weight.quant_state).float()
    expected = lora_grads(reference, data[0])
    assert quantized.keys() == expected.keys() and len(quantized) == 2 * 7 * 3
    for name, grad in expected.items():
        cosine = torch.nn.functional.cosine_similarity(quantized[name].flatten(), grad.flatten(), dim=0)
        assert cosine > 0.98, f"{name}: gradient cosine {cosine:.3f} against the dequantized fp32 model"


def test_heal_reports_every_step_and_evaluations(tiny_llama):
    pruned = prune_block(tiny_llama, 1, 1).loaded
    events = []
    result = heal(pruned, HealConfig(**{**TINY, "steps": 3, "eval_every": 2}), events.append)
    healed = result.healed
    kinds = [(e["kind"], e["step"]) for e in events if e["kind"] != "phase"]
    assert kinds == [("eval", 0), ("train", 1), ("train", 2), ("eval", 2), ("train", 3), ("eval", 3)]
    assert events[-1]["merged"] is True and events[-1]["task"].startswith("quiz-")
    train_events = [e for e in events if e["kind"] == "train"]
    assert [e["tokens"] for e in train_events] == sorted({e["tokens"] for e in train_events})  # cumulative, growing
    assert all(0 <= e["ci_low"] <= e["accuracy"] <= e["ci_high"] <= 1 for e in events if e["kind"] == "eval")
    assert healed.num_layers == 3
    evals = [e for e in events if e["kind"] == "eval"]
    assert (result.after_pruning, result.after_healing, result.steps) == (evals[0], evals[-1], 3)
    phases = [e["phase"] for e in events if e["kind"] == "phase"]
    assert phases == ["preparing adapters", "evaluating the pruned model", "training", "evaluating at step 2", "training",
                      "merging the adapter", "evaluating the healed model"]


def test_the_reference_evaluation_is_computed_once_per_model_and_settings(tiny_llama, store):
    config = HealConfig(**TINY)
    first = cached_quick_eval(tiny_llama, config, store)
    assert cached_quick_eval(tiny_llama, config, store) == first
    assert len(store.list_runs("quick-eval", "done")) == 1
    assert first == quick_eval(tiny_llama, config)  # the cache holds what a fresh evaluation gives
    cached_quick_eval(tiny_llama, dataclasses.replace(config, eval_limit=3), store)
    assert len(store.list_runs("quick-eval", "done")) == 2


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"rank": 0}, "rank"),
        ({"lr": float("nan")}, "Learning rate"),
        ({"dropout": 1.0}, "dropout"),
        ({"eval_task": "no-such-task"}, "Unknown task"),
    ],
)
def test_bad_settings_fail_with_one_message(settings, message):
    with pytest.raises(ExplorerError, match=message):
        HealConfig(**settings).check()


def test_nan_loss_and_empty_data_are_explained(tiny_llama, tmp_path):
    pruned = prune_block(tiny_llama, 1, 1).loaded
    with pytest.raises(ExplorerError, match="lower the learning rate"):
        heal(pruned, HealConfig(**{**TINY, "lr": 1e30, "eval_every": 100}))
    empty = tmp_path / "empty.txt"
    empty.write_text("too short\n\nalso short\n")
    with pytest.raises(ExplorerError, match="No usable text"):
        heal(pruned, HealConfig(**{**TINY, "source": str(empty)}))


@pytest.mark.slow
def test_cli_heal_writes_a_reloadable_model(tiny_llama_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "healed"
    command = [sys.executable, "-m", "explorer", "heal", "--model", str(tiny_llama_dir), "--device", "cpu",
               "--start", "1", "--n", "2", "--steps", "2", "--batch-size", "2", "--seq-len", "32",
               "--eval-every", "1", "--eval-limit", "2", "--val-samples", "2", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "step 2/2: train loss" in done.stderr and "before pruning: val loss" in done.stderr
    record = json.loads((out / "run.json").read_text())
    assert record["block"]["removed"] == [1, 2] and set(record["metrics"]) == {"before_pruning", "after_pruning", "healed"}
    assert "layer_range: [0, 1]" in (out / "mergekit.yaml").read_text()
    assert AutoModelForCausalLM.from_pretrained(out).config.num_hidden_layers == 2

    bad = subprocess.run(command[:-2] + ["--n", "9", "--out", str(tmp_path / "bad")], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("error: ") and "Traceback" not in bad.stderr

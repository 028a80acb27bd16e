"""The paper's healing recipe (Gromov et al., 2403.17887, App. A), resolved per model.

The expected values are the paper's table written out here independently of explorer.surgery.recipe;
the dry run reads a config with no weight file beside it, which proves it loads no weights.
"""

from __future__ import annotations

import json

import pytest
from streamlit.testing.v1 import AppTest

from explorer.cli import main
from explorer.surgery.heal import HealConfig, lora_config, training_model
from explorer.surgery.recipe import paper_recipe, table_row
from tests.families import tiny_family_model

# (model id, table row, peak lr, rank, sequence length): App. A of the paper.
PAPER = [
    ("meta-llama/Llama-2-7b-hf", "Llama-2-7B", 3e-4, 2, 2048),
    ("meta-llama/Llama-2-13b-hf", "Llama-2-13B", 3e-4, 64, 4096),
    ("meta-llama/Llama-2-70b-hf", "Llama-2-70B", 3e-5, 8, 4096),
    ("Qwen/Qwen-7B", "Qwen-7B", 3e-4, 64, 2048),
    ("Qwen/Qwen-14B", "Qwen-14B", 3e-4, 64, 4096),
    ("mistralai/Mistral-7B-v0.1", "Mistral-7B", 3e-6, 4, 2048),
    ("microsoft/phi-2", "Phi-2", 2e-4, 64, 2048),
]
FFN = {"llama": ["mlp.down_proj", "mlp.gate_proj", "mlp.up_proj"], "mistral": ["mlp.down_proj", "mlp.gate_proj", "mlp.up_proj"],
       "phi": ["mlp.fc1", "mlp.fc2"], "opt": ["fc1", "fc2"]}


@pytest.mark.parametrize(("model_id", "row", "lr", "rank", "seq_len"), PAPER)
def test_table_rows(model_id, row, lr, rank, seq_len):
    model = tiny_family_model("llama", 64)
    recipe = paper_recipe(model, model_id, parameters=10**6)  # the named row decides the length, not the size
    assert (recipe.table_row, recipe.lr, recipe.rank, recipe.alpha, recipe.seq_len) == (row, lr, rank, rank, seq_len)
    assert (recipe.dropout, recipe.steps, recipe.batch_size, recipe.warmup_steps) == (0.05, 5000, 16, 100)
    assert recipe.quantize and recipe.source == "c4" and row in recipe.row_reason


def test_unnamed_models_use_the_llama_2_7b_row_and_say_so():
    row, reason = table_row("HuggingFaceTB/SmolLM2-135M")
    assert row.name == "Llama-2-7B" and "not in the paper's table" in reason
    model = tiny_family_model("llama", 64)
    assert paper_recipe(model, "my/model", parameters=30 * 10**9).seq_len == 4096  # 13B and up
    assert paper_recipe(model, "my/model", parameters=10**8).seq_len == 2048
    assert paper_recipe(model, "my/model", parameters=10**8, max_positions=512).seq_len == 512  # the model's context


@pytest.mark.parametrize("family", sorted(FFN))
def test_ffn_targets_by_family(family):
    model = tiny_family_model(family, 64)
    assert paper_recipe(model, family, 10**6).targets == FFN[family]
    targets = lora_config(model, HealConfig(targets="ffn")).target_modules
    assert sorted(targets) == FFN[family]


def adapted_modules(peft_model) -> set[str]:
    """Names of the modules that carry a LoRA adapter ('...mlp.gate_proj.lora_A.default.weight' -> 'gate_proj')."""
    return {name.split(".lora_A")[0].rsplit(".", 1)[-1] for name, _ in peft_model.named_parameters() if ".lora_A" in name}


def test_ffn_adapters_sit_only_on_the_feed_forward_modules(tiny_llama):
    config = paper_recipe(tiny_llama.model, "x", 10**6).heal_config(HealConfig(quantize=False))
    assert config.targets == "ffn" and config.alpha == config.rank == 2
    assert adapted_modules(training_model(tiny_llama, config)) == {"gate_proj", "up_proj", "down_proj"}
    assert {"q_proj", "o_proj", "down_proj"} <= adapted_modules(training_model(tiny_llama, HealConfig(quantize=False)))
    with pytest.raises(Exception, match="Unknown training targets"):
        HealConfig(targets="attention").check()


def _dry_run(capsys, *args: str) -> dict:
    assert main(["heal", *args, "--dry-run"]) == 0
    return json.loads(capsys.readouterr().out)


def test_dry_run_prints_the_recipe_without_weights(tiny_llama_dir, tmp_path, capsys):
    """A folder with only config.json (named like Llama-2-13B): the dry run must not need weights."""
    folder = tmp_path / "Llama-2-13b-hf"
    folder.mkdir()
    config = json.loads((tiny_llama_dir / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 4096}))
    block = ["--model", str(folder), "--start", "1", "--n", "1", "--out", str(tmp_path / "out")]
    data = _dry_run(capsys, *block, "--recipe", "paper", "--steps", "7")
    assert data["targets"] == FFN["llama"] and data["target_choice"] == "ffn"
    assert (data["rank"], data["alpha"], data["lr"], data["seq_len"], data["table_row"]) == (64, 64, 3e-4, 4096, "Llama-2-13B")
    assert (data["dropout"], data["warmup_steps"], data["batch_size"], data["quantize"]) == (0.05, 100, 16, True)
    assert data["steps"] == 7  # an option given on the command line overrides the recipe
    assert not (tmp_path / "out").exists()
    plain = _dry_run(capsys, *block)
    assert plain["rank"] == HealConfig().rank and plain["target_choice"] == "all-linear" and "table_row" not in plain


def test_page_button_fills_the_recipe(embedded):
    at = AppTest.from_file("../app.py", default_timeout=180)
    at.run()
    at.switch_page("pages/prune_heal.py").run()
    at.button(key="ph_paper").click().run()
    assert not at.exception
    assert (at.number_input(key="ph_rank").value, at.number_input(key="ph_alpha").value) == (2, 2)
    assert (at.number_input(key="ph_steps").value, at.number_input(key="ph_batch").value) == (5000, 16)
    assert at.radio(key="ph_targets").value == "ffn" and at.checkbox(key="ph_qlora").value
    assert any("Llama-2-7B row is used" in c.value for c in at.caption)

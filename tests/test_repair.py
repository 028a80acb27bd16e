"""Linear repair (explorer.surgery.repair): the fit against an exactly linear block, the fold against the
explicit map for every foldable family, the repaired embedded model against the unrepaired one,
the exported folder with plain transformers, and the refusals."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from explorer.core.errors import ExplorerError
from explorer.lm.blocks import Block, check_block
from explorer.lm.layers import decoder_layers
from explorer.lm.models import LoadedModel
from explorer.surgery.repair import RepairConfig, collect_stats, down_projection, fit_block, fit_blocks, fold, repair_block, solve
from tests.families import FAMILIES, tiny_family_model
from tests.screen import small_prune_page

FOLDABLE = [f for f in FAMILIES if f not in ("gemma2", "gemma3_text")]


class LinearInM(nn.Module):
    """A decoder layer whose whole effect is linear in the MLP output M of the layer before it:
    it returns Y - M + M A, so the least-squares map that stands in for it is exactly A."""

    def __init__(self, seen: dict, transform: torch.Tensor):
        super().__init__()
        self.seen, self.transform = seen, transform

    def forward(self, hidden_states, *args, **kwargs):
        m = self.seen["m"]
        return hidden_states - m + m @ self.transform


def _with_linear_layer(tiny_llama: LoadedModel, start: int) -> tuple[LoadedModel, torch.Tensor]:
    """A copy of the tiny llama whose layer `start` is LinearInM with a random well-conditioned A."""
    model = copy.deepcopy(tiny_llama.model)
    d = model.config.hidden_size
    torch.manual_seed(1)
    transform = torch.eye(d) + 0.3 * torch.randn(d, d) / d**0.5
    seen: dict = {}
    down_projection(model, start - 1).register_forward_hook(lambda module, args, output: seen.__setitem__("m", output))
    decoder_layers(model)[start] = LinearInM(seen, transform)
    return LoadedModel(model, tiny_llama.tokenizer, "linear-block", "linear-block"), transform


def test_fit_recovers_an_exactly_linear_block(tiny_llama):
    loaded, transform = _with_linear_layer(tiny_llama, start=2)
    config = RepairConfig(samples=8, heldout_samples=4, seq_len=32, ridge=0.0)
    fit = fit_block(loaded, check_block(2, 1, 4), config)
    assert fit.layer == 1 and fit.train_tokens >= 64
    assert torch.allclose(fit.transform.float(), transform, atol=1e-4)
    assert fit.heldout_residual < 1e-5 < fit.heldout_residual_unrepaired
    ids = torch.randint(0, 1000, (2, 24))
    with torch.no_grad():
        unpruned = loaded.model(input_ids=ids).logits
        result, _ = repair_block(loaded, 2, 1, config)
        repaired = result.loaded.model(input_ids=ids).logits
    assert result.loaded.num_layers == 3
    assert torch.allclose(repaired, unpruned, atol=1e-5)


@pytest.mark.parametrize("family", FOLDABLE)
def test_folded_model_equals_model_with_explicit_map(family):
    model = tiny_family_model(family, vocab_size=128)
    d = model.get_input_embeddings().weight.shape[1]
    torch.manual_seed(2)
    transform = 3 * torch.eye(d, dtype=torch.float64) + torch.randn(d, d, dtype=torch.float64) / d**0.5
    folded = copy.deepcopy(model)
    fold(down_projection(folded, 1), transform)
    down = down_projection(model, 1)
    if getattr(down, "bias", None) is not None:  # a zero-initialized bias would not test the bias fold
        with torch.no_grad():
            down.bias.normal_()
            down_projection(folded, 1).bias.copy_(down.bias.double() @ transform)
    handle = down.register_forward_hook(lambda module, args, output: output @ transform.float())
    ids = torch.randint(0, 128, (2, 16))
    with torch.no_grad():
        explicit = model(input_ids=ids).logits
        handle.remove()
        plain = model(input_ids=ids).logits
        ours = folded(input_ids=ids).logits
    assert (plain - explicit).abs().max() > 1e-3  # T really changes the output
    assert torch.allclose(ours, explicit, atol=1e-5)


@pytest.mark.parametrize("family", ["gemma2", "gemma3_text"])
def test_post_feedforward_norm_is_refused(family):
    with pytest.raises(ExplorerError, match="post-feedforward norm"):
        down_projection(tiny_family_model(family, vocab_size=128), 1)


def test_post_layernorm_and_experts_are_refused():
    from transformers import AutoConfig, AutoModelForCausalLM

    opt = AutoConfig.for_model("opt", vocab_size=128, **{**FAMILIES["opt"], "do_layer_norm_before": False})
    with pytest.raises(ExplorerError, match="post-LayerNorm"):
        down_projection(AutoModelForCausalLM.from_config(opt), 1)
    mixtral = AutoConfig.for_model("mixtral", vocab_size=128, **FAMILIES["mistral"], num_local_experts=2)
    with pytest.raises(ExplorerError, match="no MLP down-projection"):
        down_projection(AutoModelForCausalLM.from_config(mixtral), 1)


def test_bad_input_gets_one_sentence(tiny_llama):
    config = RepairConfig(samples=8, heldout_samples=2, seq_len=32)
    with pytest.raises(ExplorerError, match="kept layer before the block.*starts at layer 0"):
        repair_block(tiny_llama, 0, 2, config)
    with pytest.raises(ExplorerError, match="needs at least 64 calibration tokens"):  # hidden size 64
        repair_block(tiny_llama, 1, 2, RepairConfig(samples=1, heldout_samples=1, seq_len=20))
    (stats,) = collect_stats(tiny_llama, [check_block(1, 2, 4)], [[5, 6, 7, 8]] * 4, batch_size=2)
    with pytest.raises(ExplorerError, match="needs at least 64 calibration tokens .* got 16"):
        solve(stats, 1e-4)
    broken = copy.deepcopy(tiny_llama.model)
    with torch.no_grad():
        decoder_layers(broken)[2].mlp.up_proj.weight.fill_(float("inf"))
    with pytest.raises(ExplorerError, match="not finite"):
        repair_block(LoadedModel(broken, tiny_llama.tokenizer, "broken", "broken"), 1, 2, config)


@pytest.mark.slow
def test_linear_repair_lowers_heldout_loss_on_the_embedded_model(embedded):
    """Fitted on the train split, scored on held-out documents (never used to fit)."""
    from explorer.evaluation.evaluate import validation_loss
    from explorer.surgery.prune import prune_block

    config = RepairConfig(samples=40, heldout_samples=2, seq_len=96)  # ~3,800 tokens: several per hidden dimension (576)
    for start, n in [(20, 3), (14, 4), (24, 5)]:
        pruned = validation_loss(prune_block(embedded, start, n).loaded, samples=8, seq_len=64)
        result, fit = repair_block(embedded, start, n, config)
        repaired = validation_loss(result.loaded, samples=8, seq_len=64)
        assert repaired < pruned, (start, n, repaired, pruned)
        assert fit.heldout_residual < fit.heldout_residual_unrepaired


def test_cli_exports_a_stock_model_that_generates_alike_with_and_without_cache(tiny_llama_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from explorer.cli import main

    out = tmp_path / "repaired"
    args = ["prune", "--model", str(tiny_llama_dir), "--device", "cpu", "--start", "1", "--n", "2", "--repair", "linear",
            "--samples", "8", "--seq-len", "32", "--out", str(out)]
    assert main(args) == 0
    record = json.loads((out / "run.json").read_text())
    assert record["repair"]["method"] == "linear" and record["repair"]["calibration"]["source"] == "embedded"
    assert record["repair"]["fit"]["heldout_residual"] > 0 and record["repair"]["fit"]["train_tokens"] >= 64
    config = json.loads((out / "config.json").read_text())
    assert "auto_map" not in config and config["num_hidden_layers"] == 2
    model = AutoModelForCausalLM.from_pretrained(out)  # plain transformers, no custom code
    assert len(model.model.layers) == 2
    ids = AutoTokenizer.from_pretrained(out)("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        cached = model.generate(**ids, max_new_tokens=12, do_sample=False, use_cache=True)
        uncached = model.generate(**ids, max_new_tokens=12, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)
    bad = tmp_path / "never"
    assert main(["prune", "--model", str(tiny_llama_dir), "--device", "cpu", "--start", "0", "--n", "2", "--repair", "linear",
                 "--out", str(bad)]) == 2
    assert not bad.exists()


def test_page_preview_puts_the_repair_beside_the_pruned_model(tiny_llama, tmp_path, monkeypatch):
    from explorer.surgery.heal import HealConfig
    from explorer.views.preview import comparison_frame, make_preview

    monkeypatch.setenv("EXPLORER_HOME", str(tmp_path))
    config = HealConfig(eval_task="quiz-capitals", eval_limit=4, val_samples=2, seq_len=32)
    preview = make_preview(tiny_llama, Block(1, 2, tiny_llama.num_layers), config, "The capital of France is", repair="linear")
    assert list(preview.rows) == ["unpruned", "pruned", "linear repair"]
    assert preview.rows["linear repair"]["val_loss"] != preview.rows["pruned"]["val_loss"]
    assert list(comparison_frame(preview.rows)["model"]) == ["unpruned", "pruned", "linear repair"]
    record = json.loads((preview.save("tiny") / "run.json").read_text())
    assert record["repair"]["method"] == "linear" and record["block"]["removed"] == [1, 2]
    assert list(make_preview(tiny_llama, Block(1, 2, tiny_llama.num_layers), config, "Paris is").rows) == ["unpruned", "pruned"]


def test_heal_repairs_linearly_before_healing(tiny_llama_dir, tmp_path):
    """heal --repair linear: the fold comes first (the step-0 evaluation is of the repaired model), run.json records it."""
    from explorer.cli import main

    out = tmp_path / "healed"
    assert main(["heal", "--model", str(tiny_llama_dir), "--device", "cpu", "--start", "1", "--n", "2", "--steps", "1",
                 "--batch-size", "2", "--seq-len", "32", "--eval-every", "1", "--eval-limit", "2", "--val-samples", "2",
                 "--repair", "linear", "--out", str(out)]) == 0
    record = json.loads((out / "run.json").read_text())
    assert record["repair"]["method"] == "linear" and record["repair"]["fit"]["layer"] == 0
    assert record["block"]["removed"] == [1, 2]


def test_prune_heal_page_shows_the_linear_repair_beside_the_pruned_model(embedded):
    """The page in-process (Streamlit AppTest): choose "linear" beside Prune, see the three models side by side."""

    at = small_prune_page()
    at.radio(key="ph_repair").set_value("linear")
    at.button(key="ph_prune").click().run()
    assert not at.exception and not at.error
    frame = at.dataframe[0].value
    assert list(frame["model"]) == ["unpruned", "pruned", "linear repair"]
    assert any("Linear repair completes" in m.value for m in at.markdown)
    assert any("held-out relative residual" in c.value for c in at.caption)


def test_blocks_fitted_together_equal_each_fitted_alone(tiny_llama):
    """One shared forward pass (the sweep's) gives every block the fit it gets alone, including
    blocks whose layers overlap (one block's Y is another's L)."""
    config = RepairConfig(samples=8, heldout_samples=4, seq_len=32)
    blocks = [check_block(1, 1, 4), check_block(2, 1, 4), check_block(1, 2, 4), check_block(3, 1, 4, allow_final=True)]
    together = fit_blocks(tiny_llama, blocks, config)
    for block, fit in zip(blocks, together):
        alone = fit_block(tiny_llama, block, config)
        assert fit.layer == alone.layer == block.start - 1
        assert torch.allclose(fit.transform, alone.transform, atol=1e-9)
        assert (fit.train_tokens, fit.heldout_tokens) == (alone.train_tokens, alone.heldout_tokens)
        assert fit.heldout_residual == pytest.approx(alone.heldout_residual, abs=1e-9)
        assert fit.heldout_residual_unrepaired == pytest.approx(alone.heldout_residual_unrepaired, abs=1e-9)
    assert fit_blocks(tiny_llama, [], config) == []

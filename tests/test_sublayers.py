"""Dropping attention or MLP sub-layers: skipped in memory equals a forward run by hand, a dropped
attention keeps no KV cache, the saved (zeroed) form reloads with stock transformers and gives the
same logits, and the sub-layer scores equal a direct computation."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from explorer.analysis.sublayers import compute_sublayer_scores
from explorer.core.errors import ExplorerError
from explorer.export.folder import save_prune
from explorer.lm.blocks import LayerSet
from explorer.lm.data import make_samples
from explorer.lm.layers import parameter_count, pruned_view
from explorer.lm.models import LoadedModel
from explorer.lm.save import stock_form
from explorer.lm.sublayers import FORM, SkippedSublayer
from explorer.surgery.prune import prune_layers, removed_parameters
from tests.by_hand import angle, cosine_sum, llama_by_hand
from tests.families import tiny_family_model

SEQUENTIAL_FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text")


@pytest.fixture(scope="module")
def tiny5(tiny_llama) -> LoadedModel:
    """A 5-layer random llama with the embedded tokenizer's vocabulary."""
    model = tiny_family_model("llama", len(tiny_llama.tokenizer), num_hidden_layers=5, initializer_range=0.1)
    return LoadedModel(model, tiny_llama.tokenizer, "tiny5", "tiny5")


def _samples(loaded: LoadedModel) -> list[list[int]]:
    texts = ["The capital of France is Paris, and the capital of Italy is", "Police arrested two men.", "One, two, three"]
    return [loaded.tokenizer(text).input_ids for text in texts]


@pytest.mark.parametrize(("attention", "mlp", "removed"), [((0, 3), (1,), ()), ((1,), (1, 4), (2,)), ((), (0, 2), (3,))])
def test_skipping_equals_a_forward_by_hand(tiny5, attention, mlp, removed):
    """Skipped sub-layers (and removed layers, and a layer with both sub-layers dropped) give the
    logits of the hand-written forward that leaves them out."""
    view = pruned_view(tiny5, LayerSet(removed, 5, attention, mlp))
    kept = [i for i in range(5) if i not in removed]
    for ids in _samples(tiny5):
        expected = llama_by_hand(tiny5.model, ids, kept, attention, mlp)[1]
        with torch.no_grad():
            got = view.model(torch.tensor([ids]), use_cache=False).logits[0]
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got, llama_by_hand(tiny5.model, ids)[1], atol=1e-3)  # the reference is no no-op


def test_dropped_attention_computes_nothing_and_keeps_no_cache(tiny5):
    view = pruned_view(tiny5, LayerSet((), 5, attention=(0, 3)))
    layers = view.model.model.layers
    assert isinstance(layers[0].self_attn, SkippedSublayer) and list(layers[0].self_attn.parameters()) == []
    ids = torch.tensor([_samples(tiny5)[0]])
    with torch.no_grad():
        cache = view.model(ids, use_cache=True).past_key_values
    assert [layer.keys is None for layer in cache.layers] == [True, False, False, True, False]
    assert cache.get_seq_length() == ids.shape[1]  # positions come from the first layer that has a cache
    cached = view.model.generate(ids, max_new_tokens=6, do_sample=False, use_cache=True, pad_token_id=0)
    assert cached.tolist() == view.model.generate(ids, max_new_tokens=6, do_sample=False, use_cache=False, pad_token_id=0).tolist()
    # the unpruned model is untouched: its own attention runs and caches
    assert not isinstance(tiny5.model.model.layers[0].self_attn, SkippedSublayer)


def test_parameters_of_dropped_sublayers_leave_memory(tiny5):
    layers = LayerSet((2,), 5, attention=(0,), mlp=(3, 4))
    result = prune_layers(tiny5, layers)
    stack = tiny5.model.model.layers
    dropped = parameter_count(stack[2]) + parameter_count(stack[0].self_attn) + parameter_count(stack[3].mlp) + parameter_count(stack[4].mlp)
    assert result.removed_params == dropped == removed_parameters(tiny5, layers)
    assert result.loaded.name.endswith("layers 2; attention of 0; MLP of 3-4") and result.loaded.fingerprint.endswith("|pruned:set:2;attention=0;mlp=3,4")


@pytest.mark.parametrize("family", SEQUENTIAL_FAMILIES)
def test_skipped_equals_zeroed_stock_form_in_every_family(family):
    """What a save writes (the dropped sub-layers with zero weights) computes exactly what the skips
    compute, cached generation included, in every family the sub-layer code supports."""
    model = tiny_family_model(family, 128, num_hidden_layers=4)
    loaded = LoadedModel(model, None, family, family)
    view = pruned_view(loaded, LayerSet((2,), 4, attention=(0, 3), mlp=(1,)))
    ids = torch.randint(0, 128, (2, 9), generator=torch.Generator().manual_seed(0))
    stock = stock_form(view.model)
    assert not any(isinstance(m, SkippedSublayer) for m in stock.modules())
    assert getattr(stock.config.get_text_config(decoder=True), "kv_sharing_modes", None) is None
    with torch.no_grad():
        torch.testing.assert_close(view.model(ids).logits, stock(ids).logits, atol=0, rtol=0)
    kwargs = dict(max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert view.model.generate(ids, use_cache=True, **kwargs).tolist() == view.model.generate(ids, use_cache=False, **kwargs).tolist()


def test_parallel_families_are_refused_in_one_sentence():
    loaded = LoadedModel(tiny_family_model("gpt2", 64), None, "gpt2", "gpt2")
    with pytest.raises(ExplorerError, match="llama-like model"):
        pruned_view(loaded, LayerSet((), 3, attention=(1,)))


def test_export_reloads_with_stock_transformers_and_same_logits(tiny_llama, tmp_path):
    layers = LayerSet((1,), 4, attention=(0,), mlp=(2,))
    result = prune_layers(tiny_llama, layers)
    out = save_prune(result, tmp_path / "sub", "tiny", {"strategy": "manual"})
    record = json.loads((out / "run.json").read_text())
    assert record["block"]["removed"] == [1] and record["block"]["sublayers"]["form"] == FORM
    assert record["block"]["sublayers"]["attention"] == [0] and record["block"]["sublayers"]["mlp"] == [2]
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()  # stock transformers, no code of ours
    assert reloaded.config.num_hidden_layers == 3 and not hasattr(reloaded.config, "kv_sharing_modes")
    assert float(reloaded.model.layers[0].self_attn.o_proj.weight.detach().abs().sum()) == 0.0
    ids = torch.tensor([_samples(tiny_llama)[0]])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, result.loaded.model(ids).logits, atol=1e-6, rtol=1e-6)
    yaml = (out / "mergekit.yaml").read_text()
    assert "filter: o_proj" in yaml and "filter: down_proj" in yaml


def test_transformers_per_layer_skip_is_not_a_stock_skip():
    """transformers 5 stores per-layer `skip` in heterogeneous configs, but its llama modelling still
    builds and runs the attention: no stock form that really skips exists (explorer.lm.sublayers)."""
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=64, per_layer_config={1: {"skip": ["self_attn"]}})
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    assert config.per_layer_config[1].skip == ["self_attn"]
    assert parameter_count(model.model.layers[1].self_attn) > 0
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        zeroed = model(ids).logits
        model.model.layers[1].self_attn.o_proj.weight.zero_()
        assert not torch.allclose(zeroed, model(ids).logits)  # the "skipped" attention did contribute


def test_sublayer_scores_equal_a_direct_computation(tiny5):
    """Block Influence over every real token and last-token angular distance of each sub-layer, from
    one padded batch of samples of different lengths, equal the hand-written forward's."""
    samples = _samples(tiny5)
    scores = compute_sublayer_scores(tiny5, samples, batch_size=3)
    L = tiny5.num_layers
    cos = torch.zeros(2 * L, dtype=torch.float64)
    last = torch.zeros(2 * L, dtype=torch.float64)
    for ids in samples:
        states = llama_by_hand(tiny5.model, ids)[0]
        for j in range(2 * L):
            cos[j] += cosine_sum(states[j], states[j + 1])
            last[j] += angle(states[j][-1], states[j + 1][-1])
    tokens = sum(len(ids) for ids in samples)
    influence, distance = (1 - cos / tokens).tolist(), (last / len(samples)).tolist()
    assert scores.tokens == tokens and scores.samples == len(samples)
    for got, expected in [(scores.attention_influence, influence[0::2]), (scores.mlp_influence, influence[1::2]),
                          (scores.attention_distance, distance[0::2]), (scores.mlp_distance, distance[1::2])]:
        assert got == pytest.approx(expected, abs=1e-5)


def test_cli_sublayers_writes_the_scores(tiny_llama, tiny_llama_dir, tmp_path):
    out = tmp_path / "sub.json"
    done = subprocess.run([sys.executable, "-m", "explorer", "sublayers", "--model", str(tiny_llama_dir), "--samples", "3",
                           "--seq-len", "16", "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    written = json.loads(out.read_text())
    expected = compute_sublayer_scores(tiny_llama, make_samples(tiny_llama.tokenizer, "embedded", 3, 16).ids)
    assert written["attention_influence"] == pytest.approx(expected.attention_influence, abs=1e-6)
    assert "attention sub-layers changing the stream least" in done.stdout

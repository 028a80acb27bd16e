"""The pruned model must compute exactly what the kept layers of the original compute.

The reference runs the ORIGINAL model's modules by hand (embeddings, each kept decoder layer
with rotary position embeddings and an explicit causal mask, final norm, LM head), so it
shares no code with the pruner's config rewriting or layer renumbering.
"""

from __future__ import annotations

import pytest
import torch

from explorer.analysis.similarity import SimilarityResult, compute_distances
from explorer.analysis.strategies import STRATEGIES, Context, choose_layers
from explorer.core.errors import ExplorerError
from explorer.surgery.prune import prune_block

PROMPT = "The Australian government said on Tuesday that the bushfires near Sydney"


def _ids(loaded, text: str = PROMPT, copies: int = 2) -> torch.Tensor:
    ids = loaded.tokenizer(text, return_tensors="pt").input_ids
    return ids.repeat(copies, 1)


@torch.no_grad()
def _logits(loaded, ids: torch.Tensor) -> torch.Tensor:
    return loaded.model(input_ids=ids, use_cache=False).logits


@torch.no_grad()
def _manual_logits(original, kept: list[int], ids: torch.Tensor) -> torch.Tensor:
    """Embeddings -> kept original layers (rotary + causal mask as LlamaModel.forward builds them) -> norm -> head."""
    base = original.model.model
    hidden = base.embed_tokens(ids)
    length = ids.shape[1]
    position_ids = torch.arange(length).unsqueeze(0)
    position_embeddings = base.rotary_emb(hidden, position_ids=position_ids)
    mask = torch.full((length, length), torch.finfo(hidden.dtype).min).triu(1)[None, None]
    for index in kept:
        hidden = base.layers[index](
            hidden, attention_mask=mask, position_ids=position_ids, position_embeddings=position_embeddings
        )
    return original.model.lm_head(base.norm(hidden))


@torch.no_grad()
def _greedy(model, ids: torch.Tensor, use_cache: bool) -> list[int]:
    out = model.generate(ids, max_new_tokens=10, do_sample=False, use_cache=use_cache, pad_token_id=0)
    return out[0, ids.shape[1]:].tolist()


@pytest.mark.parametrize(("fixture", "start", "n"), [("embedded", 12, 6), ("tiny_llama", 1, 2)])
def test_pruned_logits_equal_kept_layers_run_by_hand(request, fixture, start, n):
    loaded = request.getfixturevalue(fixture)
    ids = _ids(loaded)
    result = prune_block(loaded, start, n)
    kept = [i for i in range(loaded.num_layers) if not start <= i < start + n]
    torch.testing.assert_close(_logits(result.loaded, ids), _manual_logits(loaded, kept, ids), atol=1e-4, rtol=1e-4)
    # The reference itself is not a no-op: the unpruned model gives different logits.
    assert not torch.allclose(_logits(loaded, ids), _manual_logits(loaded, kept, ids), atol=1e-2)


def test_manual_reference_reproduces_unpruned_model(embedded):
    ids = _ids(embedded)
    reference = _manual_logits(embedded, list(range(embedded.num_layers)), ids)
    torch.testing.assert_close(_logits(embedded, ids), reference, atol=1e-4, rtol=1e-4)


def test_pruned_config_layer_idx_and_original_untouched(embedded):
    ids = _ids(embedded)
    before = _logits(embedded, ids)
    result = prune_block(embedded, 20, 6)
    model = result.loaded.model
    assert model.config.num_hidden_layers == 24 == result.loaded.num_layers
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == list(range(24))
    assert result.block.removed == tuple(range(20, 26))
    assert result.params_before - result.params_after == sum(
        p.numel() for i in range(20, 26) for p in embedded.model.model.layers[i].parameters()
    )
    assert result.loaded.tokenizer is embedded.tokenizer
    assert result.loaded.name.endswith("− layers 20-25")
    assert result.loaded.fingerprint == f"{embedded.fingerprint}|pruned:20:6"
    # The app keeps using the original: same layers, config, indices and logits.
    assert embedded.num_layers == embedded.model.config.num_hidden_layers == 30
    assert [layer.self_attn.layer_idx for layer in embedded.model.model.layers] == list(range(30))
    torch.testing.assert_close(_logits(embedded, ids), before, atol=0, rtol=0)


def test_generation_with_cache_equals_without(embedded):
    pruned = prune_block(embedded, 14, 8).loaded
    ids = _ids(embedded, copies=1)
    cached = _greedy(pruned.model, ids, use_cache=True)
    assert cached == _greedy(pruned.model, ids, use_cache=False)
    assert len(cached) == 10


def test_empty_block_returns_identical_model(embedded):
    ids = _ids(embedded)
    result = prune_block(embedded, 5, 0)
    assert result.loaded.model is not embedded.model
    assert result.params_after == result.params_before
    torch.testing.assert_close(_logits(result.loaded, ids), _logits(embedded, ids), atol=0, rtol=0)


def test_inplace_prunes_the_given_model(tiny_llama_dir):
    from explorer.lm.models import load_model

    loaded = load_model(str(tiny_llama_dir), device="cpu")
    result = prune_block(loaded, 0, 2, inplace=True)
    assert result.loaded.model is loaded.model and loaded.num_layers == 2


def test_final_layer_needs_override(tiny_llama):
    with pytest.raises(ExplorerError, match="final layer"):
        prune_block(tiny_llama, 2, 2)
    assert prune_block(tiny_llama, 2, 2, allow_final=True).loaded.num_layers == 2
    for start, n in [(3, 2), (-1, 1), (0, 4)]:
        with pytest.raises(ExplorerError):
            prune_block(tiny_llama, start, n, allow_final=True)


def strategy_block(name: str, n: int, num_layers: int, similarity=None):
    """What strategy `name` removes for n, given only the distances (the paper's three strategies)."""
    return choose_layers(name, n, Context(num_layers, similarity))


def test_top_cut_extremes(embedded):
    num_layers = embedded.num_layers
    ids = _ids(embedded, copies=1)
    whole = strategy_block("top-cut", 0, num_layers)  # keep k = L layers
    same = prune_block(embedded, whole.start, whole.n, allow_final=True).loaded
    torch.testing.assert_close(_logits(same, ids), _logits(embedded, ids), atol=0, rtol=0)

    one = strategy_block("top-cut", num_layers - 1, num_layers)  # keep k = 1 layer
    assert one.kept == [0] and one.includes_final
    first_only = prune_block(embedded, one.start, one.n, allow_final=True).loaded
    torch.testing.assert_close(_logits(first_only, ids), _manual_logits(embedded, [0], ids), atol=1e-4, rtol=1e-4)
    assert _greedy(first_only.model, ids, True) == _greedy(first_only.model, ids, False)


def test_strategy_blocks(tiny_llama):
    assert strategy_block("simple", 3, 30).removed == (26, 27, 28)
    assert strategy_block("top-cut", 3, 30).removed == (27, 28, 29)
    for strategy in STRATEGIES:
        assert strategy_block(strategy, 0, 30).empty
    with pytest.raises(ExplorerError, match="Unknown strategy"):
        strategy_block("random", 2, 30)
    with pytest.raises(ExplorerError, match="distances"):
        strategy_block("similarity", 2, 30)

    samples = [_ids(tiny_llama, text, 1)[0].tolist() for text in (PROMPT, "Police in Melbourne arrested two men.")]
    result = compute_distances(tiny_llama, samples)
    for n in (1, 2):
        starts = range(tiny_llama.num_layers - n)  # blocks that keep the final layer
        expected = min(starts, key=lambda l: result.distances[n - 1][l])
        assert strategy_block("similarity", n, tiny_llama.num_layers, result).start == expected
    with pytest.raises(ExplorerError, match="4-layer"):
        strategy_block("similarity", 1, 30, result)


def test_similarity_never_picks_the_final_layer():
    # Row n=1 whose global minimum is the final layer's block [3, 4).
    result = SimilarityResult("m", 4, [[0.5, 0.2, 0.3, 0.1], [0.4, 0.3, 0.2], [0.5, 0.6], [0.9]], samples=1)
    assert result.optimal[0]["layer"] == 1 and result.unrestricted_minima[0] == {"n": 1, "layer": 3, "distance": 0.1}
    assert strategy_block("similarity", 1, 4, result).start == 1
    assert strategy_block("similarity", 2, 4, result).start == 1


def _tiny(model_type: str, **extra):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.for_model(model_type, vocab_size=128, max_position_embeddings=128, **extra)
    return AutoModelForCausalLM.from_config(config).eval()


LLAMA_LIKE = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 4, "num_attention_heads": 2,
              "num_key_value_heads": 1, "head_dim": 16}


@pytest.mark.parametrize(
    ("model_type", "extra"),
    [
        ("gemma2", {**LLAMA_LIKE, "sliding_window": 4}),  # alternating sliding/full layer_types
        ("qwen3", {**LLAMA_LIKE, "use_sliding_window": True, "sliding_window": 4, "max_window_layers": 2}),
        ("gpt2", {"n_embd": 32, "n_layer": 4, "n_head": 2}),
        ("opt", {"hidden_size": 32, "ffn_dim": 64, "num_hidden_layers": 4, "num_attention_heads": 2,
                 "word_embed_proj_dim": 32}),
    ],
)
def test_other_families(model_type, extra):
    """The pruned model equals a fresh model of the kept depth built with the expected config and the
    kept layers' weights; per-layer lists (sliding/full layer types) follow their layers."""
    from transformers import AutoModelForCausalLM

    from explorer.lm.layers import layers_path
    from explorer.lm.models import LoadedModel

    model = _tiny(model_type, **extra)
    types = getattr(model.config, "layer_types", None)
    loaded = LoadedModel(model, None, model_type, model_type)
    pruned = prune_block(loaded, 1, 2).loaded.model
    assert pruned.config.num_hidden_layers == 2
    expected = {"num_hidden_layers": 2}
    if types is not None:
        assert len(set(types)) == 2  # the test needs mixed sliding/full layers
        assert pruned.config.layer_types == [types[0], types[3]]
        expected["layer_types"] = [types[0], types[3]]
    config = type(model.config).from_dict(model.config.to_dict())
    for key, value in expected.items():
        setattr(config, key, value)
    reference = AutoModelForCausalLM.from_config(config).eval()
    path = layers_path(model)
    weights = {
        key.replace(f"{path}.3.", f"{path}.1."): value
        for key, value in model.state_dict().items()
        if f"{path}.1." not in key and f"{path}.2." not in key
    }
    reference.load_state_dict(weights)
    ids = torch.randint(0, 128, (1, 12), generator=torch.Generator().manual_seed(1))  # longer than the window
    with torch.no_grad():
        torch.testing.assert_close(pruned(ids).logits, reference(ids).logits, atol=1e-5, rtol=1e-5)
    assert _greedy(pruned, ids, True) == _greedy(pruned, ids, False)

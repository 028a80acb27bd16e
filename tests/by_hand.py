"""A llama forward written out by hand, one sample at a time, from the model's own modules: the
independent computation the layer-set, sub-layer and strategy tests compare against. It shares no
code with the pruner, the skipping, the recording hooks or the strategies."""

from __future__ import annotations

import math

import torch


@torch.no_grad()
def llama_by_hand(model, ids: list[int], kept: list[int] | None = None, skip_attention=(), skip_mlp=()):
    """(states, logits) of one unpadded sample: states = [x^0, h^0, x^1, h^1, ...] over the `kept`
    layers (h: the stream after the layer's attention, x: after its MLP), with the listed
    sub-layers left out (their residual add only), then the final norm and the head."""
    base = model.model
    tokens = torch.tensor([ids])
    hidden = base.embed_tokens(tokens)
    position_ids = torch.arange(len(ids)).unsqueeze(0)
    rotary = base.rotary_emb(hidden, position_ids=position_ids)
    mask = torch.full((len(ids), len(ids)), torch.finfo(hidden.dtype).min).triu(1)[None, None]
    states = [hidden[0]]
    for i in range(len(base.layers)) if kept is None else kept:
        layer = base.layers[i]
        after_attention = hidden
        if i not in skip_attention:
            after_attention = hidden + layer.self_attn(hidden_states=layer.input_layernorm(hidden), attention_mask=mask,
                                                       position_embeddings=rotary)[0]
        hidden = after_attention
        if i not in skip_mlp:
            hidden = after_attention + layer.mlp(layer.post_attention_layernorm(after_attention))
        states += [after_attention[0], hidden[0]]
    return states, model.lm_head(base.norm(hidden))[0]


def loss_by_hand(model, samples: list[list[int]], kept: list[int]) -> float:
    """Mean next-token NLL over every predicted token of every sample (tokens, not samples, averaged)."""
    total = count = 0.0
    for ids in samples:
        logits = llama_by_hand(model, ids, kept)[1]
        total += float(torch.nn.functional.cross_entropy(logits[:-1].double(), torch.tensor(ids[1:]), reduction="sum"))
        count += len(ids) - 1
    return total / count


def angle(a: torch.Tensor, b: torch.Tensor) -> float:
    """arccos(cos(a, b)) / pi of two vectors."""
    cos = float(torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=0).clamp(-1, 1))
    return math.acos(cos) / math.pi


def cosine_sum(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Sum over tokens of cos(a_t, b_t) for [tokens, H] states."""
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1).sum()

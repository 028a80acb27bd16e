"""A decoder layer's two sub-layers, attention and MLP: finding them, skipping them in memory, and
the form a model with skipped sub-layers is saved in.

A llama-like layer computes h = x + attn(norm1(x)), then y = h + mlp(norm2(h)) (gemma2/3 wrap each
output in one more norm). Dropping a sub-layer (LLM-Drop, He et al. 2406.15786; FinerCut) leaves
its residual connection: the layer then adds nothing for it.

In memory a dropped sub-layer is replaced by `SkippedSublayer`, which runs nothing and returns a
[1, 1, H] zero that the layer's residual add broadcasts; its weights are not kept (only their
shapes, on the meta device). A dropped attention also keeps no KV cache: the config's
`kv_sharing_modes` entry for its layer becomes "reuse", which transformers' caches give a
`DummyLayer` (no keys, no values), as for gemma4's layers that read another layer's cache; the
llama-like families read that list nowhere else. The other layers keep their `layer_idx`, so
the cache stays aligned. (`layer_types` cannot carry it: qwen2 picks each layer's mask by it.)

Saved, stock transformers must load it (`zero_sublayers`, through `save.stock_form`): a dropped
sub-layer becomes its original module with every weight zero, so its output projection (o_proj /
down_proj) writes exact zeros.
That is exact, but a stock model still computes the zeroed sub-layer and caches its keys: no
speed-up once saved. transformers 5.x carries per-layer `skip` entries in its heterogeneous
configs (`per_layer_config`), but its llama-family modelling ignores them (checked by a test), so
no stock-loadable form that really skips exists yet.
"""

from __future__ import annotations

import copy
import itertools

import torch
from torch import nn

from explorer.core.errors import ExplorerError

ATTENTION, MLP = "attention", "mlp"
SUBLAYER_ATTRS = {ATTENTION: "self_attn", MLP: "mlp"}  # the module of each sub-layer in a llama-like layer
# The module whose INPUT is the residual stream between the two sub-layers: the MLP's pre-norm
# (gemma2/3 name it pre_feedforward_layernorm; their post_attention_layernorm wraps the attention output).
MID_NORMS = ("pre_feedforward_layernorm", "post_attention_layernorm")
# Families whose layers are sequential x -> x + attn -> + mlp with the MID_NORMS above (GPT-2,
# GPT-NeoX and phi run attention and MLP in parallel or name them otherwise; olmo2 norms outputs only).
SEQUENTIAL = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3", "granite", "smollm3", "olmo")
NO_CACHE = "reuse"  # a `kv_sharing_modes` entry: transformers' caches hold a DummyLayer (nothing) for that layer
FORM = "zeroed-output-projection"  # how a saved model holds a dropped sub-layer (run.json says so)


def _family(model: nn.Module) -> str:
    return model.config.get_text_config(decoder=True).model_type


def check_sublayers(model: nn.Module) -> None:
    """Fail in one sentence on a model whose layers are not sequential attention-then-MLP."""
    family = _family(model)
    if family not in SEQUENTIAL:
        raise ExplorerError(f"Sub-layer scores and drops need a llama-like model (one of {', '.join(SEQUENTIAL)}); "
                            f"'{family}' layers are not attention then MLP on one residual stream.")


def mid_norm(layer: nn.Module) -> nn.Module:
    """The module that receives the residual stream after the attention sub-layer."""
    for name in MID_NORMS:
        if isinstance(getattr(layer, name, None), nn.Module):
            return getattr(layer, name)
    raise ExplorerError(f"No {' or '.join(MID_NORMS)} in {type(layer).__name__}: cannot find the residual between its sub-layers.")


def _on_meta(module: nn.Module) -> nn.Module:
    """A copy of `module` whose parameters and buffers live on the meta device: its structure and
    shapes, no memory (what `zero_sublayers` rebuilds a dropped sub-layer from)."""
    memo = {}
    for tensor in itertools.chain(module.parameters(), module.buffers()):
        meta = tensor.detach().to("meta")
        memo[id(tensor)] = nn.Parameter(meta, tensor.requires_grad) if isinstance(tensor, nn.Parameter) else meta
    return copy.deepcopy(module, memo)


class SkippedSublayer(nn.Module):
    """Stands in for a dropped attention or MLP: computes nothing and returns a zero the layer adds
    to its residual (the attention's (output, weights) pair for an attention)."""

    def __init__(self, kind: str, original: nn.Module):
        super().__init__()
        self.kind = kind
        self._shape = (_on_meta(original),)  # a tuple: not a registered submodule, no parameters

    @property
    def shape(self) -> nn.Module:
        return self._shape[0]

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        zero = hidden_states.new_zeros(1, 1, hidden_states.shape[-1])
        return (zero, None) if self.kind == ATTENTION else zero


def _text_config(model: nn.Module):
    return model.config.get_text_config(decoder=True)


def skip_sublayers(model: nn.Module, layers: nn.ModuleList, attention: tuple[int, ...], mlp: tuple[int, ...]) -> None:
    """Replace the given sub-layers of `model` (indices into its decoder `layers`) by
    `SkippedSublayer`s, in place, and mark each dropped attention's layer attention-free for the KV cache."""
    if not attention and not mlp:
        return
    check_sublayers(model)
    for kind, indices in ((ATTENTION, attention), (MLP, mlp)):
        for i in indices:
            module = getattr(layers[i], SUBLAYER_ATTRS[kind])
            if not isinstance(module, SkippedSublayer):
                setattr(layers[i], SUBLAYER_ATTRS[kind], SkippedSublayer(kind, module))
    if attention:
        config = _text_config(model)
        modes = list(getattr(config, "kv_sharing_modes", None) or [None] * len(layers))
        config.kv_sharing_modes = [NO_CACHE if i in attention else mode for i, mode in enumerate(modes)]


def skipped(layers: nn.ModuleList) -> dict[str, list[int]]:
    """The skipped sub-layers among decoder `layers`, by kind."""
    found = {ATTENTION: [], MLP: []}
    for i, layer in enumerate(layers):
        for kind, name in SUBLAYER_ATTRS.items():
            if isinstance(getattr(layer, name, None), SkippedSublayer):
                found[kind].append(i)
    return found


def zero_sublayers(model: nn.Module, layers: nn.ModuleList) -> None:
    """In place (on a copy that shares the kept weights): every `SkippedSublayer` among `layers`
    becomes its original module with all weights zero, and the config loses the `kv_sharing_modes`
    the drops added: the form stock transformers loads (`FORM`)."""
    reference = next(model.parameters())
    for kind, indices in skipped(layers).items():
        for i in indices:
            skip = getattr(layers[i], SUBLAYER_ATTRS[kind])
            module = skip.shape.to_empty(device=reference.device)  # the caller's copy owns this meta module
            for tensor in itertools.chain(module.parameters(), module.buffers()):
                tensor.data = torch.zeros_like(tensor.data, dtype=reference.dtype if tensor.is_floating_point() else tensor.dtype)
            for part in module.modules():  # it was numbered before any layer below it was removed
                if isinstance(getattr(part, "layer_idx", None), int):
                    part.layer_idx = i
            setattr(layers[i], SUBLAYER_ATTRS[kind], module)
    config = _text_config(model)
    if hasattr(config, "kv_sharing_modes"):  # no SEQUENTIAL family has one of its own
        del config.kv_sharing_modes

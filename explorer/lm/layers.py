"""The decoder stack whatever the architecture: finding it, and taking layers out of it.

Dropping modules from the ModuleList is not enough on its own: the forward pass iterates
`layers[: config.num_hidden_layers]`, KV caches are built from per-layer config lists
(`layer_types`, ...), and each attention module writes the cache slot named by its
`layer_idx`. So `remove_layers` also rewrites every per-layer config entry and renumbers
`layer_idx` in the kept layers, which is what makes `generate()` with a cache agree with
generation without one. Pruning (explorer.surgery.prune) and every model's `without` view use it.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import replace
from typing import TypeVar

from torch import nn

from explorer.core.concurrency import exclusive
from explorer.core.errors import ExplorerError
from explorer.lm.blocks import LayerSet
from explorer.lm.sublayers import skip_sublayers

Model = TypeVar("Model")  # a LoadedModel (a dataclass with `model`, `name` and `fingerprint`)


# Where each family keeps its decoder stack and final norm, as attribute paths.
LAYER_PATHS = (
    "model.layers",  # llama, mistral, qwen2, qwen3, gemma, gemma2, gemma3 (text), phi, phi3, olmo
    "model.language_model.layers",  # gemma3 / multimodal wrappers
    "model.decoder.layers",  # opt
    "transformer.h",  # gpt2, falcon, bloom
    "gpt_neox.layers",  # gpt-neox, pythia
)


NORM_PATHS = (
    "model.norm",
    "model.language_model.norm",
    "model.final_layernorm",  # phi
    "model.decoder.final_layer_norm",
    "transformer.ln_f",
    "gpt_neox.final_layer_norm",
)


def _get_path(root: nn.Module, path: str) -> nn.Module | None:
    node = root
    for part in path.split("."):
        node = getattr(node, part, None)
        if node is None:
            return None
    return node


def layers_path(model: nn.Module) -> str:
    """The attribute path of the decoder stack, e.g. 'model.layers'.

    Known families first; then any ModuleList as long as `config.num_hidden_layers`, so new
    llama-like architectures work without a table entry.
    """
    for path in LAYER_PATHS:
        node = _get_path(model, path)
        if isinstance(node, nn.ModuleList):
            return path
    expected = getattr(model.config, "num_hidden_layers", None)
    lists = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.ModuleList)]
    for name, module in lists:
        if expected and len(module) == expected:
            return name
    found = ", ".join(f"{n} ({len(m)})" for n, m in lists) or "none"
    raise ExplorerError(
        f"Unsupported architecture '{getattr(model.config, 'model_type', type(model).__name__)}': "
        f"no decoder-layer list found (module lists: {found})."
    )


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    return _get_path(model, layers_path(model))


def final_norm(model: nn.Module) -> nn.Module | None:
    for path in NORM_PATHS:
        node = _get_path(model, path)
        if isinstance(node, nn.Module):
            return node
    return None


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# Config lists that name layers by index (not one entry per layer): remapped, not sliced.
INDEX_LISTS = ("mlp_only_layers", "moe_layers", "cross_attention_layers", "attn_layer_indices", "full_attn_idxs")


# Per-layer lists whose name does not contain "layer".
PER_LAYER_LISTS = ("activation_sparsity_pattern", "kv_sharing_modes")


# Ints that count the bottom layers with some property (qwen2/qwen3: sliding window below it).
LAYER_COUNTS = ("max_window_layers",)


def _is_per_layer_list(key: str, value: object, num_layers: int) -> bool:
    return (
        isinstance(value, (list, tuple))
        and len(value) == num_layers
        and ("layer" in key or key in PER_LAYER_LISTS)
    )


def prune_config(config, kept: list[int], num_layers: int) -> None:
    """Rewrite `num_hidden_layers` and every per-layer field of `config` (in place) for the kept layers."""
    new_index = {old: new for new, old in enumerate(kept)}
    for key, value in list(config.to_dict().items()):
        if key in INDEX_LISTS and isinstance(value, (list, tuple)):
            setattr(config, key, [new_index[i] for i in value if i in new_index])
        elif _is_per_layer_list(key, value, num_layers):
            setattr(config, key, type(value)(value[i] for i in kept))
        elif key in LAYER_COUNTS and isinstance(value, int):
            setattr(config, key, sum(1 for i in kept if i < value))
    if hasattr(config, "num_hidden_layers"):  # a multimodal wrapper's own config has none; its text config does
        config.num_hidden_layers = len(kept)


def _configs(model: nn.Module) -> list:
    """The top config and the decoder's own config when it is a separate object (gemma3, multimodal)."""
    top = model.config
    text = top.get_text_config(decoder=True)
    return [top] if text is top else [top, text]


def renumber_layers(layers: nn.ModuleList) -> None:
    """Give every module that carries a `layer_idx` (layer, attention) its new position."""
    for new, layer in enumerate(layers):
        for module in layer.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = new


def _set_path(root: nn.Module, path: str, value: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, value)


def weight_sharing_copy(model: nn.Module) -> nn.Module:
    """A copy of `model` whose module tree and config are its own and whose weights are not: every
    parameter is a NEW nn.Parameter over the SAME storage (same data_ptr), buffers are shared.

    Healing trains on this instead of a deep copy: peft freezes and wraps the copy's modules and
    a distillation teacher (the unpruned model) keeps running on the very same weights, so the
    student costs no second model in memory. New Parameter objects (not the same ones) keep the
    copy's flags private: peft's requires_grad=False does not reach the original, and a weight
    swapped in by `.data = ...` (peft's safe merge) or replaced by a private clone changes the copy
    alone. In-place writes (`.data += ...`) would reach both: callers never do them. Tied weights
    stay tied (one new Parameter per original)."""
    fresh = {id(p): nn.Parameter(p.detach(), requires_grad=p.requires_grad) for p in model.parameters()}
    fresh.update({id(b): b for b in model.buffers()})
    with exclusive(model):  # a copy taken while another caller's hooks are on would keep them
        return copy.deepcopy(model, fresh)


def pruned_view(loaded: Model, block: LayerSet) -> Model:
    """`loaded` without the block (any `LayerSet`), SHARING its weights: the module tree and config (what pruning
    edits: the layer list, per-layer config, layer_idx) are deep-copied, the parameters and
    buffers are not. A point then costs no weight copy and no extra memory, which is what lets
    a sweep over a model that fills the GPU keep one load. Safe because evaluation never
    writes weights and healing trains adapters (or private clones) on a `weight_sharing_copy`
    (heal.training_model)."""
    model = loaded.model
    shared = {id(t): t for t in itertools.chain(model.parameters(), model.buffers())}
    with exclusive(model):  # a copy taken while another caller's hooks are on would keep them
        shell = copy.deepcopy(model, shared)
    remove_layers(shell, block)
    return without_identity(replace(loaded, model=shell), block)


def remove_layers(model: nn.Module, block: LayerSet) -> None:
    """Take the set's layers out of `model` in place: the layer list, every per-layer config
    entry, and the kept layers' `layer_idx`; its skipped sub-layers are skipped first
    (`explorer.lm.sublayers`: their indices are the unpruned model's)."""
    layers = decoder_layers(model)
    skip_sublayers(model, layers, block.attention, block.mlp)
    if not block.n:
        return
    kept = nn.ModuleList(layers[i] for i in block.kept)
    renumber_layers(kept)
    _set_path(model, layers_path(model), kept)
    for config in _configs(model):
        prune_config(config, block.kept, block.num_layers)


def without_identity(loaded: Model, block: LayerSet) -> Model:
    """`loaded` renamed and re-fingerprinted as the model without the set: what every cache
    keys a pruned model by, whichever way it was pruned."""
    what = f"layer{'s' if block.n > 1 or block.sublayers else ''} {block.span}"
    name = loaded.name if block.empty else f"{loaded.name} − {what}"
    return replace(loaded, name=name, fingerprint=f"{loaded.fingerprint}|pruned:{block.key}")

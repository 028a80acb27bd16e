"""Remove a block of decoder layers and return a model that still runs, caches and saves.

Dropping modules from the ModuleList is not enough on its own: the forward pass iterates
`layers[: config.num_hidden_layers]`, KV caches are built from per-layer config lists
(`layer_types`, ...), and each attention module writes the cache slot named by its
`layer_idx`. So the pruner also rewrites every per-layer config entry and renumbers
`layer_idx` in the kept layers, which is what makes `generate()` with a cache agree with
generation without one.

Strategies (which block to remove for a given n):
- "similarity": Gromov et al. (2403.17887): the block [l*, l*+n) whose input and output
  are closest in angular distance (needs a `SimilarityResult`).
- "simple": their baseline, the n deepest layers except the final one, [L-1-n, L-1).
- "top-cut": Men et al. "Why Lift so Heavy?" (2402.11700): keep only layers [0, k),
  k = L - n, final layer included in the cut; the final norm and LM head stay.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass

from torch import nn

from explorer.lm.blocks import Block, check_block
from explorer.core.concurrency import exclusive
from explorer.core.errors import ExplorerError
from explorer.lm.models import LoadedModel, decoder_layers, layers_path, parameter_count
from explorer.analysis.similarity import SimilarityResult

STRATEGIES = ("similarity", "simple", "top-cut")

# Config lists that name layers by index (not one entry per layer): remapped, not sliced.
INDEX_LISTS = ("mlp_only_layers", "moe_layers", "cross_attention_layers", "attn_layer_indices", "full_attn_idxs")
# Per-layer lists whose name does not contain "layer".
PER_LAYER_LISTS = ("activation_sparsity_pattern", "kv_sharing_modes")
# Ints that count the bottom layers with some property (qwen2/qwen3: sliding window below it).
LAYER_COUNTS = ("max_window_layers",)


@dataclass
class PruneResult:
    loaded: LoadedModel  # the pruned model
    block: Block
    params_before: int
    params_after: int

    @property
    def removed_params(self) -> int:
        return self.params_before - self.params_after


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


def prune_block(
    loaded: LoadedModel, start: int, n: int, allow_final: bool = False, inplace: bool = False
) -> PruneResult:
    """Remove decoder layers [start, start+n). The original stays usable unless `inplace`."""
    num_layers = loaded.num_layers
    block = check_block(start, n, num_layers, allow_final)
    with exclusive(loaded.model):  # a deep copy taken while another caller's hooks are on would keep them
        model = loaded.model if inplace else copy.deepcopy(loaded.model)
    params_before = parameter_count(model)
    if n:
        layers = decoder_layers(model)
        kept = nn.ModuleList(layers[i] for i in block.kept)
        renumber_layers(kept)
        _set_path(model, layers_path(model), kept)
        for config in _configs(model):
            prune_config(config, block.kept, num_layers)
    pruned = LoadedModel(
        model,
        loaded.tokenizer,
        f"{loaded.name} − layers {block.span}" if n else loaded.name,
        f"{loaded.fingerprint}|pruned:{start}:{n}",
    )
    return PruneResult(pruned, block, params_before, parameter_count(model))


def pruned_view(loaded: LoadedModel, block: Block) -> LoadedModel:
    """`loaded` without the block, SHARING its weights: the module tree and config (what pruning
    edits: the layer list, per-layer config, layer_idx) are deep-copied, the parameters and
    buffers are not. A point then costs no weight copy and no extra memory, which is what lets
    a sweep over a model that fills the GPU keep one load. Safe because evaluation never
    writes weights and healing trains on its own copy (heal.training_model)."""
    model = loaded.model
    shared = {id(t): t for t in itertools.chain(model.parameters(), model.buffers())}
    with exclusive(model):  # a copy taken while another caller's hooks are on would keep them
        shell = LoadedModel(copy.deepcopy(model, shared), loaded.tokenizer, loaded.name, loaded.fingerprint)
    return prune_block(shell, block.start, block.n, allow_final=block.includes_final, inplace=True).loaded


def strategy_block(
    strategy: str, n: int, num_layers: int, similarity: SimilarityResult | None = None
) -> Block:
    """The block each strategy removes for n layers; n = 0 is the empty block for all of them.

    "similarity" is `SimilarityResult.best_block` (the argmin of row n over blocks that keep
    the final layer, as the paper does); "top-cut" is the only strategy that removes the final layer.
    """
    if strategy not in STRATEGIES:
        raise ExplorerError(f"Unknown strategy '{strategy}': choose one of {', '.join(STRATEGIES)}.")
    if n == 0:
        return check_block(0, 0, num_layers)
    if strategy == "simple":
        return check_block(num_layers - 1 - n, n, num_layers)
    if strategy == "top-cut":
        return check_block(num_layers - n, n, num_layers, allow_final=True)
    if similarity is None:
        raise ExplorerError("The similarity strategy needs angular distances: compute them first.")
    if similarity.num_layers != num_layers:
        raise ExplorerError(
            f"The distances are for a {similarity.num_layers}-layer model, not this {num_layers}-layer one."
        )
    return similarity.best_block(n)


def removed_parameters(loaded: LoadedModel, block: Block) -> int:
    """Parameters in the block's layers: what pruning it saves, said before anything is pruned."""
    layers = decoder_layers(loaded.model)
    return sum(parameter_count(layers[i]) for i in block.removed)

"""Remove a block of decoder layers and return a model that still runs, caches and saves: a copy
(or the model itself, `inplace`) with the layers taken out by `explorer.lm.layers.remove_layers`,
and the parameter counts before and after. Which block to remove is explorer.analysis.strategies.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from explorer.core.concurrency import exclusive
from explorer.lm.blocks import Block, check_block
from explorer.lm.layers import decoder_layers, parameter_count, remove_layers, without_identity
from explorer.lm.models import LoadedModel


@dataclass
class PruneResult:
    loaded: LoadedModel  # the pruned model
    block: Block
    params_before: int
    params_after: int

    @property
    def removed_params(self) -> int:
        return self.params_before - self.params_after


def prune_block(
    loaded: LoadedModel, start: int, n: int, allow_final: bool = False, inplace: bool = False
) -> PruneResult:
    """Remove decoder layers [start, start+n). The original stays usable unless `inplace`."""
    num_layers = loaded.num_layers
    block = check_block(start, n, num_layers, allow_final)
    with exclusive(loaded.model):  # a deep copy taken while another caller's hooks are on would keep them
        model = loaded.model if inplace else copy.deepcopy(loaded.model)
    params_before = parameter_count(model)
    remove_layers(model, block)
    pruned = without_identity(LoadedModel(model, loaded.tokenizer, loaded.name, loaded.fingerprint), block)
    return PruneResult(pruned, block, params_before, parameter_count(model))


def removed_parameters(loaded: LoadedModel, block: Block) -> int:
    """Parameters in the block's layers: what pruning it saves, said before anything is pruned."""
    layers = decoder_layers(loaded.model)
    return sum(parameter_count(layers[i]) for i in block.removed)

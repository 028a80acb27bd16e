"""Remove a set of decoder layers (or skip sub-layers) and return a model that still runs, caches
and saves: a copy (or the model itself, `inplace`) with the layers taken out by
`explorer.lm.layers.remove_layers`, and the parameter counts before and after. Which layers to
remove is explorer.analysis.strategies.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from explorer.core.concurrency import exclusive
from explorer.lm.blocks import LayerSet, check_block
from explorer.lm.layers import decoder_layers, parameter_count, remove_layers, without_identity
from explorer.lm.models import LoadedModel
from explorer.lm.sublayers import SUBLAYER_ATTRS


@dataclass
class PruneResult:
    loaded: LoadedModel  # the pruned model
    block: LayerSet  # what was removed: a Block for a contiguous cut
    params_before: int
    params_after: int

    @property
    def removed_params(self) -> int:
        return self.params_before - self.params_after


def prune_layers(loaded: LoadedModel, layers: LayerSet, inplace: bool = False) -> PruneResult:
    """Remove the set's layers and skip its sub-layers (validated by the caller, e.g.
    `blocks.check_layer_set`). The original stays usable unless `inplace`."""
    with exclusive(loaded.model):  # a deep copy taken while another caller's hooks are on would keep them
        model = loaded.model if inplace else copy.deepcopy(loaded.model)
    params_before = parameter_count(model)
    remove_layers(model, layers)
    pruned = without_identity(LoadedModel(model, loaded.tokenizer, loaded.name, loaded.fingerprint), layers)
    return PruneResult(pruned, layers, params_before, parameter_count(model))


def prune_block(
    loaded: LoadedModel, start: int, n: int, allow_final: bool = False, inplace: bool = False
) -> PruneResult:
    """Remove decoder layers [start, start+n). The original stays usable unless `inplace`."""
    return prune_layers(loaded, check_block(start, n, loaded.num_layers, allow_final), inplace)


def removed_parameters(loaded: LoadedModel, layers: LayerSet) -> int:
    """Parameters in the set's layers and skipped sub-layers: what pruning it saves, said before
    anything is pruned."""
    stack = decoder_layers(loaded.model)
    whole = sum(parameter_count(stack[i]) for i in layers.removed)
    return whole + sum(parameter_count(getattr(stack[i], SUBLAYER_ATTRS[kind]))
                       for kind in SUBLAYER_ATTRS for i in getattr(layers, kind))

"""Remove a block of decoder layers and return a model that still runs, caches and saves: a copy
(or the model itself, `inplace`) with the layers taken out by `explorer.lm.layers.remove_layers`,
and the parameter counts before and after.

Strategies (which block to remove for a given n):
- "similarity": Gromov et al. (2403.17887): the block [l*, l*+n) whose input and output
  are closest in angular distance (needs a `SimilarityResult`).
- "simple": their baseline, the n deepest layers except the final one, [L-1-n, L-1).
- "top-cut": Men et al. "Why Lift so Heavy?" (2402.11700): keep only layers [0, k),
  k = L - n, final layer included in the cut; the final norm and LM head stay.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from explorer.core.concurrency import exclusive
from explorer.core.errors import ExplorerError
from explorer.lm.blocks import Block, check_block
from explorer.lm.layers import decoder_layers, parameter_count, remove_layers, without_identity
from explorer.lm.models import LoadedModel
from explorer.analysis.similarity import SimilarityResult

STRATEGIES = ("similarity", "simple", "top-cut")


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

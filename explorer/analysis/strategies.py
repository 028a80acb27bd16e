"""Which block each strategy removes for n layers (the strategy registry grows here).

- "similarity": Gromov et al. (2403.17887): the block [l*, l*+n) whose input and output
  are closest in angular distance (needs a `SimilarityResult`).
- "simple": their baseline, the n deepest layers except the final one, [L-1-n, L-1).
- "top-cut": Yuan, Nie, Ma & Färber, "Why Lift so Heavy?" (2402.11700): keep only layers [0, k),
  k = L - n, final layer included in the cut; the final norm and LM head stay.
"""

from __future__ import annotations

from explorer.analysis.similarity import SimilarityResult
from explorer.core.errors import ExplorerError
from explorer.lm.blocks import Block, check_block, simple_start

STRATEGIES = ("similarity", "simple", "top-cut")


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
        return check_block(simple_start(n, num_layers), n, num_layers)
    if strategy == "top-cut":
        return check_block(num_layers - n, n, num_layers, allow_final=True)
    if similarity is None:
        raise ExplorerError("The similarity strategy needs angular distances: compute them first.")
    if similarity.num_layers != num_layers:
        raise ExplorerError(
            f"The distances are for a {similarity.num_layers}-layer model, not this {num_layers}-layer one."
        )
    return similarity.best_block(n)

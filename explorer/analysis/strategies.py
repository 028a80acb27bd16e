"""Which layers each strategy removes: a small interface and a registry (mergekit keeps its merge
methods the same way), so the CLI, the sweep, the classify feature and the pages list, describe and
run every strategy without naming any.

A `Strategy` says what it needs (`NEEDS`: the angular distances, per-layer Block Influence,
sub-layer scores, or forward passes of the model itself) and `choose(n, context)` returns the
`LayerSet` it removes for n. The caller builds the `Context` once (explorer.state.cache.strategy_context
computes or fetches each need) and asks for every n it wants.

Whole layers (n counts layers; every strategy but top-cut keeps the final layer, which the paper
shows must stay):
- "similarity": Gromov et al. (2403.17887): the block [l*, l*+n) whose input and output are
  closest in angular distance (`SimilarityResult.best_block`).
- "simple": their baseline, the n deepest layers except the final one, [L-1-n, L-1).
- "top-cut": Yuan, Nie, Ma & Färber, "Why Lift so Heavy?" (2402.11700): keep only layers [0, k),
  k = L - n, final layer included in the cut; the final norm and LM head stay.
- "block-influence": ShortGPT (Men et al. 2403.03853): the n layers with the lowest Block
  Influence, 1 - mean cos(x^l, x^(l+1)) over every token, wherever they are.
- "iterative-loss": SLEB (Song et al. 2402.09025): remove one layer at a time, each time the one
  whose removal raises the calibration loss least, measured again after every removal.
- "iterative-angular": the paper's metric made greedy: remove the single layer with the smallest
  d(x^l, x^(l+1)), measure the distances again on the model without it, repeat.
Sub-layers (n counts sub-layers of one kind; LLM-Drop, He et al. 2406.15786):
- "attention-drop" / "mlp-drop": the n attention (MLP) sub-layers with the lowest Block Influence
  between the stream before and after them (`explorer.analysis.sublayers`).

The iterative strategies compute their whole removal order once (`removal_order`, L - 1 steps);
choosing n is then its first n entries, so a sweep pays for the selection once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from explorer.analysis.similarity import Progress, SimilarityResult, compute_distances
from explorer.analysis.sublayers import SublayerScores
from explorer.core.errors import ExplorerError
from explorer.evaluation.evaluate import token_loss
from explorer.lm.blocks import Block, LayerSet, check_block, check_layer_set, simple_start
from explorer.lm.layers import pruned_view
from explorer.lm.models import LoadedModel
from explorer.surgery.reuse import PrefixReuse

DISTANCES, INFLUENCE, SUBLAYERS, MODEL = "distances", "influence", "sublayers", "model"
NEEDS = {
    DISTANCES: "the angular distances d(x^l, x^(l+n)) (the similarity heatmap)",
    INFLUENCE: "each layer's Block Influence (one all-token pass)",
    SUBLAYERS: "each attention and MLP sub-layer's Block Influence (one pass)",
    MODEL: "forward passes of the model on calibration text while choosing",
}


@dataclass
class Context:
    """What strategies choose from, for one model with `num_layers` layers: each field is one of
    `NEEDS`, None until computed. `orders` maps an iterative strategy's name to its removal order."""

    num_layers: int
    similarity: SimilarityResult | None = None
    influence: list[float] | None = None
    sublayers: SublayerScores | None = None
    orders: dict[str, list[int]] = field(default_factory=dict)

    def require(self, value, need: str, strategy: str):
        """`value`, or one sentence saying what the strategy still needs."""
        if value is None:
            raise ExplorerError(f"The {strategy} strategy needs {NEEDS[need]}: compute it first.")
        size = len(value) if isinstance(value, list) else value.num_layers
        if size != self.num_layers:
            raise ExplorerError(f"The {strategy} strategy was given scores of a {size}-layer model, not of this "
                                f"{self.num_layers}-layer one.")
        return value


class Strategy:
    """One way to choose what to remove. `unit` is what n counts: "layers", or the sub-layer kind
    ("attention", "mlp") it drops. `removes_final`: may remove the final layer."""

    name: str = ""
    label: str = ""
    description: str = ""
    needs: frozenset[str] = frozenset()
    unit: str = "layers"
    removes_final: bool = False

    def choose(self, n: int, context: Context) -> LayerSet:
        raise NotImplementedError

    def removal_order(self, loaded: LoadedModel, ids: list[list[int]], batch_size: int,
                      progress: Progress | None = None, steps: int | None = None) -> list[int]:
        """The layers in the order an iterative strategy removes them (only for those needing MODEL),
        `steps` of them (default: all but the final layer)."""
        raise NotImplementedError


class Similarity(Strategy):
    name, label, needs = "similarity", "similarity (Gromov et al.)", frozenset({DISTANCES})
    description = "the block whose input and output are closest in angular distance (the paper)"

    def choose(self, n: int, context: Context) -> LayerSet:
        return context.require(context.similarity, DISTANCES, self.name).best_block(n)


class Simple(Strategy):
    name, label = "simple", "simple (deepest n before the last)"
    description = "the n deepest layers except the final one (the paper's baseline)"

    def choose(self, n: int, context: Context) -> LayerSet:
        return check_block(simple_start(n, context.num_layers), n, context.num_layers)


class TopCut(Strategy):
    name, label, removes_final = "top-cut", "top-cut (Yuan et al.)", True
    description = "the last n layers, final one included: keep layers 0..L-n-1 (Why Lift so Heavy?)"

    def choose(self, n: int, context: Context) -> LayerSet:
        return check_block(context.num_layers - n, n, context.num_layers, allow_final=True)


def lowest(scores: list[float], n: int, candidates: range) -> tuple[int, ...]:
    """The n candidates with the lowest scores, ties to the shallower, in layer order."""
    return tuple(sorted(sorted(candidates, key=lambda l: (scores[l], l))[:n]))


class BlockInfluence(Strategy):
    name, label, needs = "block-influence", "block influence (ShortGPT)", frozenset({INFLUENCE})
    description = "the n layers with the lowest Block Influence, anywhere except the final layer (ShortGPT)"

    def choose(self, n: int, context: Context) -> LayerSet:
        influence = context.require(context.influence, INFLUENCE, self.name)
        return check_layer_set(lowest(influence, n, range(context.num_layers - 1)), context.num_layers)


class Iterative(Strategy):
    """Removes one layer at a time, choosing each from the model without the ones before it."""

    needs = frozenset({MODEL})

    def choose(self, n: int, context: Context) -> LayerSet:
        order = context.orders.get(self.name)
        if order is None:
            raise ExplorerError(f"The {self.name} strategy needs {NEEDS[MODEL]}: compute its removal order first.")
        if n > len(order):
            raise ExplorerError(f"The {self.name} order holds {len(order)} layers, not {n}.")
        return check_layer_set(order[:n], context.num_layers)

    def removal_order(self, loaded: LoadedModel, ids: list[list[int]], batch_size: int,
                      progress: Progress | None = None, steps: int | None = None) -> list[int]:
        """L - 1 greedy steps (or `steps`); the final layer is never a candidate. Ties go to the shallower layer."""
        num_layers, removed = loaded.num_layers, []
        steps = num_layers - 1 if steps is None else steps
        for step in range(steps):
            current = pruned_view(loaded, LayerSet(tuple(removed), num_layers)) if removed else loaded
            kept = [i for i in range(num_layers) if i not in removed]
            scores = self.step_scores(current, ids, batch_size)  # by position in `current`, final excluded
            removed.append(kept[min(range(len(scores)), key=lambda p: (scores[p], p))])
            if progress:
                progress(step + 1, steps)
        return removed

    def step_scores(self, current: LoadedModel, ids: list[list[int]], batch_size: int) -> list[float]:
        raise NotImplementedError


class IterativeLoss(Iterative):
    name, label = "iterative-loss", "iterative loss (SLEB)"
    description = "remove one layer at a time, the one whose removal raises the calibration loss least (SLEB)"

    def step_scores(self, current: LoadedModel, ids: list[list[int]], batch_size: int) -> list[float]:
        """The calibration loss without each layer but the final: the current model's loss pass is
        recorded once and each candidate runs only the layers after it (`reuse.PrefixReuse`)."""
        size = current.num_layers
        reuse = PrefixReuse(current, set(range(size - 1)), lambda model: {"loss": token_loss(model, ids, batch_size)[0]})
        return [reuse.measure(LayerSet((p,), size))["loss"] for p in range(size - 1)]


class IterativeAngular(Iterative):
    name, label = "iterative-angular", "iterative angular distance"
    description = "remove the layer with the smallest angular distance d(x^l, x^(l+1)), measure again, repeat"

    def step_scores(self, current: LoadedModel, ids: list[list[int]], batch_size: int) -> list[float]:
        return compute_distances(current, ids, batch_size).distances[0][: current.num_layers - 1]


class SublayerDrop(Strategy):
    needs = frozenset({SUBLAYERS})

    def choose(self, n: int, context: Context) -> LayerSet:
        scores = context.require(context.sublayers, SUBLAYERS, self.name)
        return check_layer_set((), context.num_layers, **{self.unit: scores.lowest(self.unit, n)})


class AttentionDrop(SublayerDrop):
    name, label, unit = "attention-drop", "attention drop (LLM-Drop)", "attention"
    description = "the n attention sub-layers with the lowest Block Influence; their MLPs stay (LLM-Drop)"


class MlpDrop(SublayerDrop):
    name, label, unit = "mlp-drop", "MLP drop", "mlp"
    description = "the n MLP sub-layers with the lowest Block Influence; their attentions stay"


STRATEGIES: dict[str, Strategy] = {s.name: s for s in (
    Similarity(), Simple(), TopCut(), BlockInfluence(), IterativeLoss(), IterativeAngular(), AttentionDrop(), MlpDrop())}
PAPER_STRATEGIES = ("similarity", "simple", "top-cut")  # the paper's two and Why Lift so Heavy's cut: the sweep's default


def get_strategy(name: str) -> Strategy:
    if name not in STRATEGIES:
        raise ExplorerError(f"Unknown strategy '{name}': choose one of {', '.join(STRATEGIES)}.")
    return STRATEGIES[name]


def strategies_help() -> str:
    """Every strategy with what it removes, for a --strategy help text or a page's help."""
    return "; ".join(f"{s.name}: {s.description}" for s in STRATEGIES.values())


def needs_of(names: list[str] | tuple[str, ...]) -> set[str]:
    """Everything the named strategies need, together."""
    return set().union(*(get_strategy(name).needs for name in names))


def choose_layers(name: str, n: int, context: Context) -> LayerSet:
    """What strategy `name` removes for n (layers, or sub-layers of its kind); n = 0 removes nothing."""
    strategy = get_strategy(name)
    if not 0 <= n < context.num_layers:
        what = "layers" if strategy.unit == "layers" else f"{strategy.unit} sub-layers"
        raise ExplorerError(f"Cannot remove {n} of {context.num_layers} {what}: choose n from 0 to {context.num_layers - 1}.")
    return Block(0, 0, context.num_layers) if n == 0 else strategy.choose(n, context)


def timed_order(strategy: Strategy, loaded: LoadedModel, ids: list[list[int]], batch_size: int,
                progress: Progress | None = None) -> dict:
    """An iterative strategy's removal order with the seconds it took: what a "selection" run stores."""
    started = time.perf_counter()
    order = strategy.removal_order(loaded, ids, batch_size, progress)
    return {"strategy": strategy.name, "order": order, "seconds": time.perf_counter() - started}

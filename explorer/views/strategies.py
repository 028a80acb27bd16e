"""What the pages ask of the strategy registry: what a strategy removes on the Prune page, and every
strategy's choice for each n on the Similarity page's heatmap. Whatever a strategy needs is computed
on the newest heatmap's calibration text (or `PAGE_CALIBRATION` before any heatmap ran) and cached in
the store, so a page pays for it once per model."""

from __future__ import annotations

from explorer.analysis.similarity import SimilarityResult
from explorer.analysis.strategies import STRATEGIES, Context, choose_layers
from explorer.lm.blocks import LayerSet
from explorer.lm.models import LoadedModel
from explorer.state.cache import strategy_context
from explorer.state.store import Run, Store
from explorer.views.session import page_runs

PAGE_CALIBRATION = {"source": "embedded", "samples": 32, "seq_len": 128}  # before any heatmap ran on the model
# Strategies the heatmap can mark besides its own (similarity's best block, simple's; top-cut's is the right edge)
MARKABLE = tuple(name for name, s in STRATEGIES.items() if s.unit == "layers" and name not in ("similarity", "simple", "top-cut"))


def _heatmaps(loaded: LoadedModel, store: Store, visitor: str | None) -> list[Run]:
    """This visitor's finished heatmaps of exactly these weights, newest first (every one for the operator)."""
    return page_runs(store, "similarity", visitor, fingerprint=loaded.fingerprint, status="done")


def calibration(loaded: LoadedModel, store: Store, visitor: str | None) -> dict:
    """The text settings a page's strategy uses: the visitor's newest heatmap's, so its choices and the
    heatmap agree."""
    runs = _heatmaps(loaded, store, visitor)
    settings = runs[0].settings if runs else PAGE_CALIBRATION
    return {key: settings[key] for key in PAGE_CALIBRATION}


def page_context(loaded: LoadedModel, strategies: list[str], store: Store, visitor: str | None,
                 text: dict | None = None) -> Context:
    """What `strategies` need on `loaded`: the similarity strategy takes the newest heatmap as the
    Prune page always has; the others compute (or fetch) theirs on `text` (default `calibration`)."""
    text = text or calibration(loaded, store, visitor)
    others = [name for name in strategies if name != "similarity"]
    context = strategy_context(loaded, others, text["source"], text["samples"], text["seq_len"], store=store)
    if "similarity" in strategies and (runs := _heatmaps(loaded, store, visitor)):
        context.similarity = SimilarityResult.from_json(runs[0].result)
    return context


def chosen_sets(loaded: LoadedModel, strategies: list[str], store: Store, visitor: str | None,
                text: dict) -> dict[str, list[LayerSet]]:
    """Each strategy's set for every n = 1..L-1 (what the heatmap marks), from one context."""
    context = page_context(loaded, strategies, store, visitor, text)
    return {name: [choose_layers(name, n, context) for n in range(1, loaded.num_layers)] for name in strategies}

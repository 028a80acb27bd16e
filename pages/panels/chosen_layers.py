"""The Similarity page's marks of other strategies: the layers each chosen strategy removes for
every n, drawn on the heatmap (explorer.views.figures.similarity), computed on the heatmap's text."""

from __future__ import annotations

import streamlit as st

from explorer.analysis.strategies import STRATEGIES
from explorer.lm.blocks import LayerSet
from explorer.lm.models import LoadedModel
from explorer.views.strategies import MARKABLE, chosen_sets
from pages import get_store, user_errors, viewer


def marked_sets(loaded: LoadedModel, settings: dict) -> dict[str, list[LayerSet]]:
    """The strategies the user asks to see on the heatmap, with their set for each n."""
    names = st.multiselect("Also mark the layers these strategies remove (row n: the n layers each drops)", MARKABLE,
                           key="sim_marked", format_func=lambda name: STRATEGIES[name].label,
                           help="; ".join(f"{name}: {STRATEGIES[name].description}" for name in MARKABLE)
                           + ". Iterative strategies run the model once per removal: minutes the first time, then cached.")
    if not names:
        return {}
    with user_errors(), st.spinner("Choosing the layers (computed once on the heatmap's text, then cached)…"):
        return chosen_sets(loaded, names, get_store(), viewer(), settings)
    return {}

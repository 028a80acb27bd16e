"""The Prune & heal page's choice of what to remove: the heatmap's pick, a block by hand, or any
registered strategy (explorer.analysis.strategies), whose set need not be one block."""

from __future__ import annotations

import streamlit as st

from explorer.analysis.strategies import DISTANCES, STRATEGIES, choose_layers, get_strategy, strategies_help
from explorer.lm.blocks import LayerSet, check_block, simple_start
from explorer.lm.models import LoadedModel
from explorer.views.strategies import calibration, page_context
from pages import get_store, user_errors, viewer
from pages.panels.heatmap import BLOCK_KEY

START_KEY, SIZE_KEY = "ph_start", "ph_n"
MANUAL = "manual (numbers below)"


def _from_heatmap(model: dict, num_layers: int) -> dict | None:
    """The heatmap's pick when it was made on this model; it sets the inputs once, when it changes."""
    picked = st.session_state.get(BLOCK_KEY)
    from_heatmap = picked if picked and picked["model"] == model and picked["num_layers"] == num_layers else None
    if from_heatmap and st.session_state.get("ph_from") != (from_heatmap["start"], from_heatmap["n"]):
        st.session_state["ph_from"] = (from_heatmap["start"], from_heatmap["n"])
        st.session_state[START_KEY], st.session_state[SIZE_KEY] = from_heatmap["start"], from_heatmap["n"]
    if st.session_state.get(SIZE_KEY, num_layers) >= num_layers or st.session_state.get(START_KEY, num_layers) >= num_layers:
        st.session_state[SIZE_KEY] = max(1, num_layers // 4)  # first visit, or a model with fewer layers
        st.session_state[START_KEY] = simple_start(st.session_state[SIZE_KEY], num_layers)
    return from_heatmap


def _strategy_set(loaded: LoadedModel, strategy: str, n: int) -> LayerSet | None:
    """The strategy's set for n; what it needs is computed once per model (a spinner says what)."""
    needs = get_strategy(strategy).needs - {DISTANCES}  # the heatmap is read, never computed here
    text = calibration(loaded, get_store(), viewer())
    with user_errors(), st.spinner(f"Computing what {strategy} needs on {text['samples']} samples of "
                                   f"{text['source']} (once per model, then cached)…" if needs else "Choosing…"):
        return choose_layers(strategy, n, page_context(loaded, [strategy], get_store(), viewer(), text))
    return None


def layer_picker(loaded: LoadedModel, model: dict) -> tuple[LayerSet | None, bool]:
    """What to remove (None while a strategy cannot choose) and whether the final layer may go."""
    num_layers = loaded.num_layers
    from_heatmap = _from_heatmap(model, num_layers)
    strategy = st.selectbox("Choose what to remove by", [MANUAL, *STRATEGIES], key="ph_strategy",
                            format_func=lambda name: STRATEGIES[name].label if name in STRATEGIES else name,
                            help=strategies_help())
    left, middle, right = st.columns([1, 1, 2], vertical_alignment="bottom")
    unit = STRATEGIES[strategy].unit if strategy in STRATEGIES else "layers"
    n = int(middle.number_input("Layers n" if unit == "layers" else f"{unit} sub-layers n", min_value=0,
                                max_value=num_layers - 1, value=st.session_state[SIZE_KEY], step=1, key=SIZE_KEY))
    chosen = _strategy_set(loaded, strategy, n) if strategy != MANUAL else None
    if chosen is not None and chosen.contiguous:
        st.session_state[START_KEY] = chosen.start
    start = int(left.number_input("First layer l", min_value=0, max_value=num_layers - 1,
                                  value=st.session_state[START_KEY], step=1, key=START_KEY, disabled=strategy != MANUAL))
    allow_final = right.checkbox("Allow removing the final layer", key="ph_allow_final",
                                 help="The paper shows the final layer must be kept; top-cut removes it by design.")
    if strategy != MANUAL:
        if chosen is not None:
            st.caption(f"{strategy} removes {chosen.describe()}.")
        return chosen, allow_final or get_strategy(strategy).removes_final
    if from_heatmap and (start, n) == (from_heatmap["start"], from_heatmap["n"]):
        st.caption(f"Block picked on the heatmap (similarity run #{from_heatmap['similarity_run']}).")
    with user_errors():
        return check_block(start, n, num_layers, allow_final), allow_final
    return None, allow_final

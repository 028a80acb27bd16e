"""The Similarity page's sub-layer panel: how much each attention and each MLP sub-layer changes the
residual stream (explorer.analysis.sublayers), two rows, with what attention-drop / mlp-drop drop."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from explorer.analysis.sublayers import SublayerScores
from explorer.lm.models import LoadedModel
from explorer.state.cache import cached_sublayers, sublayers_run
from explorer.views.figures.sublayers import SCORE_NAMES, sublayer_figure
from pages import download_row, get_store, user_errors


def _scores(loaded: LoadedModel, settings: dict) -> SublayerScores | None:
    """The cached scores for the heatmap's text, or computed on request (one forward pass)."""
    text = (settings["source"], int(settings["samples"]), int(settings["seq_len"]))
    if run := sublayers_run(get_store(), loaded, *text):
        return SublayerScores.from_json(run.result)
    if not st.button("Score the sub-layers", key="sim_sub_run",
                     help="One forward pass over the heatmap's samples, keeping the stream between attention and MLP."):
        return None
    with user_errors(), st.spinner("Recording the stream around every sub-layer…"):
        return cached_sublayers(loaded, *text, store=get_store())[1]
    return None


def sublayer_panel(loaded: LoadedModel, settings: dict) -> None:
    st.subheader("Attention and MLP sub-layers")
    st.caption("Each layer adds its attention, then its MLP, to the residual stream. Dropping the sub-layers that "
               "change it least (LLM-Drop: the lowest Block Influence) is the attention-drop / mlp-drop strategy.")
    scores = _scores(loaded, settings)
    if scores is None:
        return
    left, right = st.columns(2)
    score = left.radio("Colour by", list(SCORE_NAMES), format_func=SCORE_NAMES.get, horizontal=True, key="sim_sub_score")
    k = right.slider("Mark the k lowest of each kind", 0, scores.num_layers - 1, scores.num_layers // 4, key="sim_sub_k")
    st.plotly_chart(sublayer_figure(scores, score, k), key="sim_sublayers", theme=None)
    frame = pd.DataFrame({"layer": range(scores.num_layers), **{name: getattr(scores, name) for name in (
        "attention_influence", "mlp_influence", "attention_distance", "mlp_distance")}})
    download_row([("Sub-layer scores (CSV)", frame.to_csv(index=False), "sublayers.csv", "text/csv", "sim_sub_csv")])

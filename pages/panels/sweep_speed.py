"""The Sweep page's accuracy-vs-speedup plot: what each strategy's pruning buys in measured speed, and
the Pareto front of each curve (explorer.views.figures.sweep.speed_figure), for sweeps that timed their points."""

from __future__ import annotations

import streamlit as st

from explorer.views.figures.sweep import speed_figure

SPEED_TEXT = """
**What pruning buys.** Each point's pruned model was timed against the unpruned one (greedy decode at
batch 1, the two interleaved in one process, fastest of three repeats). The line joins each curve's
Pareto front: no other point of it is both faster and more accurate. The ideal speedup L / (L − n)
is in the hover; the LM head, the embeddings and each step's Python keep the measured one below it.
"""


def speed_plot(points: list[dict], stem: str) -> None:
    """The plot beside its explanation, with its HTML download; nothing when no point was timed."""
    if not any(p.get("speedup") is not None for p in points):
        return
    figure = speed_figure(points)
    left, right = st.columns([3, 1])
    left.plotly_chart(figure, key="sw_speed_plot")
    right.markdown(SPEED_TEXT)
    st.download_button("Speed plot (HTML)", lambda: figure.to_html(include_plotlyjs=True), f"{stem}-speed.html", "text/html",
                       key="sw_speed_html", on_click="ignore")

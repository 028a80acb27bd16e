"""The Similarity page's sub-layer panel: one row of attention sub-layers, one of MLP sub-layers, a
cell per layer coloured by how much that sub-layer changes the residual stream, with the ones the
attention-drop / mlp-drop strategies would drop for k marked."""

from __future__ import annotations

from typing import Literal

import plotly.graph_objects as go

from explorer.analysis.sublayers import SublayerScores
from explorer.views.figures.similarity import COLORSCALE
from explorer.views.figures.style import title

Score = Literal["influence", "distance"]
SCORE_NAMES = {"influence": "Block Influence, 1 − cos (all tokens)", "distance": "angular distance (last token)"}
ROWS = (("attention", "attention"), ("mlp", "MLP"))


def sublayer_figure(scores: SublayerScores, score: Score = "influence", k: int = 0) -> go.Figure:
    """A 2 x L grid (attention above, MLP below) of `score` per sub-layer; ✕ marks the k sub-layers
    of each kind with the lowest Block Influence (what attention-drop and mlp-drop drop for k)."""
    values = [getattr(scores, f"{kind}_{score}") for kind, _ in ROWS]
    labels = [label for _, label in ROWS]
    fig = go.Figure(go.Heatmap(
        z=values, x=list(range(scores.num_layers)), y=labels, colorscale=COLORSCALE,
        colorbar=dict(title=dict(text=SCORE_NAMES[score].split(",")[0].split(" (")[0]), thickness=14),
        hovertemplate="layer %{x}, %{y}: %{z:.4f}<extra></extra>",
    ))
    if k:
        for (kind, label) in ROWS:
            dropped = scores.lowest(kind, k)
            fig.add_trace(go.Scatter(
                x=list(dropped), y=[label] * len(dropped), mode="markers", name=f"{kind}-drop, k = {k}",
                marker=dict(symbol="x", size=10, color="white", line=dict(color="black", width=1)),
                hovertemplate=f"{kind}-drop drops this {label} sub-layer (k = {k})<extra></extra>", showlegend=False,
            ))
    fig.update_layout(
        title=title(f"{scores.model}: {SCORE_NAMES[score]} of each sub-layer over {scores.samples} samples"
                    + (f"; ✕ the {k} lowest of each kind" if k else "")),
        xaxis=dict(title="layer", dtick=max(1, scores.num_layers // 15)), yaxis=dict(autorange="reversed"),
        height=260, margin=dict(l=80, r=20, t=60, b=50), plot_bgcolor="white",
    )
    return fig

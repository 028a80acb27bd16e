"""The Metrics page's figures: every block-choice metric's scores against the block start, their
rank correlations, and ShortGPT's per-layer Block Influence. The frame feeds the CSV download too.
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from explorer.analysis.metrics import METRICS, MetricScores
from explorer.views.figures.style import BLUE, DARK, LEGEND_BELOW, MARGIN, PURPLE, RED, title

METRIC_COLORS = {"last_token": BLUE, "all_tokens": PURPLE, "block_influence": RED, "brute_force": DARK}


def metrics_frame(scores: MetricScores, n: int) -> pd.DataFrame:
    """Each metric's score per block start l for block size n (the metric page's CSV)."""
    frame = pd.DataFrame({"l": range(scores.num_layers - n + 1), **scores.scores(n)})
    frame.insert(1, "n", n)
    return frame


def metrics_figure(scores: MetricScores, n: int) -> go.Figure:
    """Every metric against l, min-max scaled to [0, 1] (their units differ; the shapes and the
    argmins are what compare); the star is the block each metric would prune."""
    frame = metrics_frame(scores, n)
    fig = go.Figure()
    for name in scores.scores(n):
        raw = frame[name]
        span = raw.max() - raw.min()
        scaled = (raw - raw.min()) / span if span > 0 else raw * 0
        fig.add_trace(go.Scatter(
            x=frame.l, y=scaled, mode="lines+markers", name=METRICS[name], customdata=raw, line=dict(color=METRIC_COLORS[name]),
            hovertemplate="l = %{x}<br>score %{customdata:.4g}<extra>" + METRICS[name] + "</extra>",
        ))
        best = int(raw.idxmin())
        fig.add_trace(go.Scatter(
            x=[frame.l[best]], y=[scaled[best]], mode="markers", showlegend=False,
            marker=dict(symbol="star", size=15, color=METRIC_COLORS[name], line=dict(color="black", width=1)),
            hovertemplate=f"{METRICS[name]} prunes layers {best}-{best + n - 1}<extra></extra>",
        ))
    fig.update_layout(
        title=title(f"Block scores for n = {n} (lower = safer to drop; stars = each metric's choice)"),
        xaxis=dict(title="first layer l of the block [l, l+n)", dtick=max(1, scores.num_layers // 15)),
        yaxis=dict(title="score, min-max scaled", range=[-0.05, 1.05]), height=420, margin=MARGIN, legend=LEGEND_BELOW,
    )
    return fig


def correlation_figure(scores: MetricScores, n: int) -> go.Figure:
    """Spearman rank correlations between the metrics as a small annotated heatmap: readable at any
    window width, where a wide table clipped its values off-screen."""
    table = scores.rank_correlations(n)
    names = list(table)
    labels = [METRICS[name] for name in names]
    values = [[table[a][b] for b in names] for a in names]
    fig = go.Figure(go.Heatmap(
        z=values, x=labels, y=labels, zmin=-1, zmax=1, colorscale="RdBu", showscale=False,
        text=[[f"{v:.2f}" for v in row] for row in values], texttemplate="%{text}",
        hovertemplate="%{y} vs %{x}: %{z:.3f}<extra></extra>",
    ))
    fig.update_layout(height=300, margin=dict(l=10, r=10, t=10, b=10), yaxis=dict(autorange="reversed"))
    return fig


def influence_figure(scores: MetricScores) -> go.Figure:
    """ShortGPT's per-layer Block Influence: how much each layer turns the residual stream."""
    fig = go.Figure(go.Bar(x=list(range(scores.num_layers)), y=scores.layer_influence,
                           hovertemplate="layer %{x}: BI %{y:.4f}<extra></extra>"))
    fig.update_layout(title=title("Block Influence per layer, 1 − cos(x^i, x^(i+1))"),
                      xaxis_title="layer i", yaxis_title="BI", height=320, margin=MARGIN)
    return fig

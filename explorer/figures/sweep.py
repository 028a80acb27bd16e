"""Figures of the sweep (the paper's Figures 1-2) and of the metric comparison, as plotly figures.

Kept apart from `explorer.figures` (the heatmap) so each page's figures live in one file.
Every builder takes plain results (point dicts, MetricScores) and returns a go.Figure; the
same frames feed the CSV downloads, so a plot and its data never disagree.
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from explorer.metrics import METRICS, MetricScores
from explorer.sweep import curve_name, first_at_chance, point_repair

STRATEGY_COLORS = {"similarity": "#1f77b4", "simple": "#ff7f0e", "top-cut": "#2ca02c"}
REPAIR_DASHES = {"none": "solid", "linear": "dot", "lora": "dash"}  # one line per (strategy, repair)
METRIC_COLORS = {"last_token": "#1f77b4", "all_tokens": "#9467bd", "block_influence": "#d62728", "brute_force": "#2b2b2b"}
POINT_COLUMNS = [
    "strategy", "healed", "repair", "n", "fraction", "start", "num_layers", "task", "accuracy", "ci_low", "ci_high",
    "chance", "agreement", "agreement_ci_low", "agreement_ci_high", "val_loss", "val_loss_se", "normalized_loss",
    "normalized_loss_se", "seconds", "shared",
]


def points_frame(points: list[dict]) -> pd.DataFrame:
    """One row per point, sorted by curve then n (the CSV download and every plot's data)."""
    frame = pd.DataFrame([{**p, "repair": point_repair(p)} for p in points], columns=POINT_COLUMNS)
    return frame.sort_values(["strategy", "repair", "n"], kind="stable").reset_index(drop=True)


def chance_caption(points: list[dict]) -> str:
    """Where each curve (strategy, repair) first reaches chance, under the accuracy plot."""
    lines = []
    for strategy, repair in sorted({(p["strategy"], point_repair(p)) for p in points}):
        hit = first_at_chance(points, strategy, repair)
        name = curve_name(strategy, repair)
        lines.append(f"**{name}**: at chance from {hit['fraction']:.0%} of layers dropped (n = {hit['n']})" if hit
                     else f"**{name}**: above chance at every point measured")
    return ("Accuracy first reaches chance (first point whose 95% interval contains chance or lies below it): "
            + "; ".join(lines))


def _curves(frame: pd.DataFrame):
    for (strategy, repair), curve in frame.groupby(["strategy", "repair"], sort=True):
        yield strategy, repair, curve_name(strategy, repair), curve


def _rgba(hex_color: str, alpha: float) -> str:
    r, g, b = (int(hex_color[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def _layout(fig: go.Figure, title: str, y_title: str, **yaxis) -> go.Figure:
    fig.update_layout(
        title=dict(text=title, font_size=14), height=420, margin=dict(l=60, r=20, t=60, b=50),
        xaxis=dict(title="fraction of layers dropped n / L", tickformat=".0%", rangemode="tozero"),
        yaxis=dict(title=y_title, **yaxis), legend=dict(orientation="h", y=-0.2), hovermode="closest",
    )
    return fig


def accuracy_figure(points: list[dict]) -> go.Figure:
    """Accuracy vs fraction dropped per curve, with its 95% Wilson band, the random-guess line,
    and a ring on each curve's first point whose interval reaches chance."""
    frame = points_frame(points)
    fig = go.Figure()
    for strategy, repair, label, curve in _curves(frame):
        color = STRATEGY_COLORS.get(strategy, "#7f7f7f")
        band = dict(mode="lines", line=dict(width=0), hoverinfo="skip", showlegend=False, legendgroup=label)
        fig.add_trace(go.Scatter(x=curve.fraction, y=curve.ci_high, **band))
        fig.add_trace(go.Scatter(x=curve.fraction, y=curve.ci_low, fill="tonexty", fillcolor=_rgba(color, 0.15), **band))
        fig.add_trace(go.Scatter(
            x=curve.fraction, y=curve.accuracy, mode="lines+markers", name=label, legendgroup=label,
            line=dict(color=color, dash=REPAIR_DASHES.get(repair, "solid")),
            customdata=curve[["n", "start", "ci_low", "ci_high", "agreement"]].to_numpy(),
            hovertemplate="n = %{customdata[0]} (%{x:.0%}), block from layer %{customdata[1]}<br>"
            "accuracy %{y:.2f} [%{customdata[2]:.2f}, %{customdata[3]:.2f}]<br>"
            "same answer as unpruned: %{customdata[4]:.0%}<extra>" + label + "</extra>",
        ))
        hit = first_at_chance(points, strategy, repair)
        if hit:
            fig.add_trace(go.Scatter(
                x=[hit["fraction"]], y=[hit["accuracy"]], mode="markers", showlegend=False, legendgroup=label,
                marker=dict(size=16, symbol="circle-open", color=color, line=dict(width=2)),
                hovertemplate=f"{label}: at chance from {hit['fraction']:.0%}<extra></extra>",
            ))
    if not frame.empty:
        chance = float(frame.chance.iloc[0])
        fig.add_hline(y=chance, line=dict(color="gray", dash="dot"), annotation_text=f"random guess ({chance:.0%})",
                      annotation_position="bottom right")
    task = frame.task.iloc[0] if not frame.empty else ""
    return _layout(fig, f"Accuracy on {task} vs layers dropped", "accuracy (95% Wilson band)", range=[0, 1])


def loss_figure(points: list[dict]) -> go.Figure:
    """Normalized held-out loss vs fraction dropped: 0 = unpruned, 1 = uniform guessing."""
    frame = points_frame(points)
    fig = go.Figure()
    for strategy, repair, label, curve in _curves(frame):
        fig.add_trace(go.Scatter(
            x=curve.fraction, y=curve.normalized_loss, mode="lines+markers", name=label,
            line=dict(color=STRATEGY_COLORS.get(strategy, "#7f7f7f"), dash=REPAIR_DASHES.get(repair, "solid")),
            error_y=dict(type="data", array=curve.normalized_loss_se.fillna(0),
                         visible=bool(curve.normalized_loss_se.notna().any())),
            customdata=curve[["n", "val_loss", "val_loss_se"]].fillna(float("nan")).to_numpy(),
            hovertemplate="n = %{customdata[0]} (%{x:.0%})<br>normalized %{y:.3f} (loss %{customdata[1]:.3f} "
            "± %{customdata[2]:.3f} nats, standard error over documents)<extra>" + label + "</extra>",
        ))
    fig.add_hline(y=1, line=dict(color="gray", dash="dot"), annotation_text="uniform guessing", annotation_position="top left")
    return _layout(fig, "Normalized held-out loss vs layers dropped", "(loss − unpruned) / (ln|V| − unpruned)")


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
        title=dict(text=f"Block scores for n = {n} (lower = safer to drop; stars = each metric's choice)", font_size=14),
        xaxis=dict(title="first layer l of the block [l, l+n)", dtick=max(1, scores.num_layers // 15)),
        yaxis=dict(title="score, min-max scaled", range=[-0.05, 1.05]), height=420,
        margin=dict(l=60, r=20, t=60, b=50), legend=dict(orientation="h", y=-0.2),
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
    fig.update_layout(title=dict(text="Block Influence per layer, 1 − cos(x^i, x^(i+1))", font_size=14),
                      xaxis_title="layer i", yaxis_title="BI", height=320, margin=dict(l=60, r=20, t=60, b=50))
    return fig

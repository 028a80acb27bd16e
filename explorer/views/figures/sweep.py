"""The Sweep page's figures (the paper's Figures 1-2): accuracy and normalized loss against the
fraction of layers dropped, one line per (strategy, repair).

Every builder takes the sweep's point dicts and returns a go.Figure; the same frame feeds the
CSV download, so a plot and its data never disagree.
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from explorer.views.figures.style import GREY, LEGEND_BELOW, MARGIN, STRATEGY_COLORS, rgba, title
from explorer.experiments.sweep import curve_name, first_at_chance, point_repair

REPAIR_DASHES = {"none": "solid", "linear": "dot", "lora": "dash"}  # one line per (strategy, repair)
POINT_COLUMNS = [
    "strategy", "healed", "repair", "n", "fraction", "start", "num_layers", "task", "accuracy", "ci_low", "ci_high",
    "chance", "agreement", "agreement_ci_low", "agreement_ci_high", "val_loss", "val_loss_se", "normalized_loss",
    "normalized_loss_se", "seconds", "shared", "layers", "attention", "mlp",
]  # layers / attention / mlp: the indices of a point whose set is not one block (explorer.experiments.sweep.run)


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


def _layout(fig: go.Figure, text: str, y_title: str, **yaxis) -> go.Figure:
    fig.update_layout(
        title=title(text), height=420, margin=MARGIN,
        xaxis=dict(title="fraction dropped n / L (of layers; of that kind's sub-layers for attention-drop, mlp-drop)",
                   tickformat=".0%", rangemode="tozero"),
        yaxis=dict(title=y_title, **yaxis), legend=LEGEND_BELOW, hovermode="closest",
    )
    return fig


def accuracy_figure(points: list[dict]) -> go.Figure:
    """Accuracy vs fraction dropped per curve, with its 95% Wilson band, the random-guess line,
    and a ring on each curve's first point whose interval reaches chance."""
    frame = points_frame(points)
    fig = go.Figure()
    for strategy, repair, label, curve in _curves(frame):
        color = STRATEGY_COLORS.get(strategy, GREY)
        band = dict(mode="lines", line=dict(width=0), hoverinfo="skip", showlegend=False, legendgroup=label)
        fig.add_trace(go.Scatter(x=curve.fraction, y=curve.ci_high, **band))
        fig.add_trace(go.Scatter(x=curve.fraction, y=curve.ci_low, fill="tonexty", fillcolor=rgba(color, 0.15), **band))
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
            line=dict(color=STRATEGY_COLORS.get(strategy, GREY), dash=REPAIR_DASHES.get(repair, "solid")),
            error_y=dict(type="data", array=curve.normalized_loss_se.fillna(0),
                         visible=bool(curve.normalized_loss_se.notna().any())),
            customdata=curve[["n", "val_loss", "val_loss_se"]].fillna(float("nan")).to_numpy(),
            hovertemplate="n = %{customdata[0]} (%{x:.0%})<br>normalized %{y:.3f} (loss %{customdata[1]:.3f} "
            "± %{customdata[2]:.3f} nats, standard error over documents)<extra>" + label + "</extra>",
        ))
    fig.add_hline(y=1, line=dict(color="gray", dash="dot"), annotation_text="uniform guessing", annotation_position="top left")
    return _layout(fig, "Normalized held-out loss vs layers dropped", "(loss − unpruned) / (ln|V| − unpruned)")

"""The accuracy-vs-k figure of a classify run (the curve of Yuan et al., 2402.11700) and its table, from point dicts.

The frame feeds both the plot and the CSV download, so they never disagree.
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from explorer.views.figures.style import BLUE, GREEN, GREY, LEGEND_BELOW, MARGIN, RED, interval_bars, title

MODE_COLORS = {"icl": GREY, "prompt-ft": BLUE, "head-ft": RED}
STRATEGY_DASH = {"top-cut": "solid", "similarity": "dash"}
COLUMNS = ["strategy", "mode", "k", "start", "n", "num_layers", "accuracy", "ci_low", "ci_high", "chance",
           "n_train", "n_test", "steps", "train_seconds", "eval_seconds", "trainable_params", "train_loss_before", "train_loss_after"]


def classify_frame(points: list[dict]) -> pd.DataFrame:
    """One row per point (predictions left out), sorted by curve then k."""
    frame = pd.DataFrame(points, columns=COLUMNS)
    return frame.sort_values(["strategy", "mode", "k"], kind="stable").reset_index(drop=True)


def accuracy_vs_k_figure(points: list[dict]) -> go.Figure:
    """Accuracy against layers kept per (strategy, mode), 95% Wilson intervals as error bars,
    the chance line, and the split sizes in the title."""
    frame = classify_frame(points)
    fig = go.Figure()
    for (strategy, mode), curve in frame.groupby(["strategy", "mode"], sort=True):
        fig.add_trace(go.Scatter(
            x=curve.k, y=curve.accuracy, mode="lines+markers", name=f"{mode} ({strategy})",
            line=dict(color=MODE_COLORS.get(mode, GREEN), dash=STRATEGY_DASH.get(strategy, "dot")),
            error_y=interval_bars(curve.accuracy, curve.ci_low, curve.ci_high),
            customdata=curve[["ci_low", "ci_high", "train_seconds"]],
            hovertemplate="k=%{x}: %{y:.2f} [%{customdata[0]:.2f}, %{customdata[1]:.2f}]<br>finetuning %{customdata[2]:.1f}s<extra></extra>",
        ))
    sizes = ""
    if len(frame):
        fig.add_hline(y=frame.chance.iloc[0], line_dash="dot", line_color="black", annotation_text="chance")
        sizes = f" (train {frame.n_train.iloc[0]}, test {frame.n_test.iloc[0]})"
    fig.update_layout(
        title=title(f"Held-out accuracy vs layers kept{sizes}"), height=440, margin=MARGIN,
        xaxis=dict(title="layers kept k"), yaxis=dict(title="accuracy (95% Wilson interval)", range=[0, 1]),
        legend=LEGEND_BELOW,
    )
    return fig

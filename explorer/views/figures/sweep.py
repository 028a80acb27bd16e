"""The Sweep page's figures (the paper's Figures 1-2): accuracy and normalized loss against the
fraction of layers dropped, one line per (strategy, repair); with a generation task, its accuracy
beside the likelihood accuracy, and the repetition rate of the free continuations; and, when the
sweep timed its points, accuracy against the measured speedup with each curve's Pareto front.

Every builder takes the sweep's point dicts and returns a go.Figure; the same frame feeds the
CSV download, so a plot and its data never disagree.
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from explorer.evaluation.accuracy import question_count
from explorer.experiments.sweep import curve_name, first_at_chance, point_repair
from explorer.views.figures.style import GREY, LEGEND_BELOW, MARGIN, STRATEGY_COLORS, rgba, title

REPAIR_DASHES = {"none": "solid", "linear": "dot", "lora": "dash"}  # one line per (strategy, repair)
POINT_COLUMNS = [
    "strategy", "healed", "repair", "n", "fraction", "start", "num_layers", "task", "accuracy", "ci_low", "ci_high",
    "n_questions", "chance", "agreement", "agreement_ci_low", "agreement_ci_high", "val_loss", "val_loss_se", "normalized_loss",
    "normalized_loss_se", "speedup", "ideal_speedup", "speedup_bound", "seconds", "shared", "gen_task", "gen_accuracy", "gen_ci_low", "gen_ci_high",
    "repetition_4", "distinct_2", "reference_logprob", "layers", "attention", "mlp",
]  # layers / attention / mlp: the indices of a point whose set is not one block (explorer.experiments.sweep.run)


def points_frame(points: list[dict]) -> pd.DataFrame:
    """One row per point, sorted by curve then n (the CSV download and every plot's data)."""
    frame = pd.DataFrame([{**p, "repair": point_repair(p), "n_questions": question_count(p)} for p in points],
                         columns=POINT_COLUMNS)
    return frame.sort_values(["strategy", "repair", "n"], kind="stable").reset_index(drop=True)


def curve_story(points: list[dict]) -> str:
    """What each accuracy curve does, in words computed from its points (never a fixed script): the
    unpruned accuracy with its n, how far the curve holds (each point's 95% interval still overlaps
    the unpruned one) or that it drops at the first pruned point, and where it reaches chance."""
    lines = []
    for strategy, repair in sorted({(p["strategy"], point_repair(p)) for p in points}):
        curve = sorted((p for p in points if p["strategy"] == strategy and point_repair(p) == repair), key=lambda p: p["n"])
        base = next((p for p in curve if p["n"] == 0), None) or next((p for p in points if p["n"] == 0), None)
        pruned = [p for p in curve if p["n"] > 0]
        if base is None or not pruned:
            continue
        holds = []
        for point in pruned:
            if point["ci_high"] < base["ci_low"]:
                break
            holds.append(point)
        n = question_count(base)
        text = f"**{curve_name(strategy, repair)}**: {base['accuracy']:.0%} unpruned" + (f" (n = {n})" if n else "") + "; "
        if not holds:
            first = pruned[0]
            text += f"it drops at the first point measured ({first['fraction']:.0%} dropped: {first['accuracy']:.0%})"
        elif len(holds) == len(pruned):
            text += f"it holds within the unpruned model's interval at every point measured (to {holds[-1]['fraction']:.0%})"
        else:
            text += f"it holds to {holds[-1]['fraction']:.0%} dropped, then falls"
        hit = first_at_chance(points, strategy, repair)
        text += (f", and reaches chance at {hit['fraction']:.0%}" if hit else ", and stays above chance at every point measured")
        lines.append(text + ".")
    return " ".join(lines)


def _curves(frame: pd.DataFrame):
    for (strategy, repair), curve in frame.groupby(["strategy", "repair"], sort=True):
        yield strategy, repair, curve_name(strategy, repair), curve


def _layout(fig: go.Figure, text: str, y_title: str, x_max: float | None = None, **yaxis) -> go.Figure:
    """`x_max`: the largest fraction the sweep will measure, so a live plot's axis is the whole sweep's
    from its first point on and does not stretch as points arrive."""
    xaxis = dict(title="fraction dropped n / L (of layers; of that kind's sub-layers for attention-drop, mlp-drop)",
                 tickformat=".0%", rangemode="tozero")
    if x_max:
        xaxis["range"] = [-0.02, x_max + 0.02]
    fig.update_layout(
        title=title(text), height=420, margin=MARGIN,
        xaxis=xaxis,
        yaxis=dict(title=y_title, **yaxis), legend=LEGEND_BELOW, hovermode="closest",
    )
    return fig


def accuracy_figure(points: list[dict], x_max: float | None = None) -> go.Figure:
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
            customdata=curve[["n", "start", "ci_low", "ci_high", "agreement", "n_questions"]].to_numpy(),
            hovertemplate="n = %{customdata[0]} (%{x:.0%}), block from layer %{customdata[1]}<br>"
            "accuracy %{y:.2f} [%{customdata[2]:.2f}, %{customdata[3]:.2f}] on %{customdata[5]} questions<br>"
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
    return _layout(fig, f"Accuracy on {task} vs layers dropped", "accuracy (95% Wilson band)", x_max, range=[0, 1])


def loss_figure(points: list[dict], x_max: float | None = None) -> go.Figure:
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
    return _layout(fig, "Normalized held-out loss vs layers dropped", "(loss − unpruned) / (ln|V| − unpruned)", x_max)


def pareto_front(points: list[dict]) -> list[dict]:
    """The points no other point beats on both counts (as fast or faster AND as accurate or more, one of
    them strictly), by speedup: the best accuracy each speedup can buy. Points without a speedup are left out."""
    timed = sorted((p for p in points if p.get("speedup") is not None), key=lambda p: (-p["speedup"], -p["accuracy"]))
    front, best = [], float("-inf")
    for point in timed:
        if point["accuracy"] > best:
            front.append(point)
            best = point["accuracy"]
    return front[::-1]


def speed_figure(points: list[dict]) -> go.Figure:
    """Accuracy against the measured decode speedup (batch 1) per curve: every timed point, and its
    Pareto front as a line; the ideal L / (L - n) of each point in the hover."""
    frame = points_frame([p for p in points if p.get("speedup") is not None])
    fig = go.Figure()
    for strategy, repair, label, curve in _curves(frame):
        color, dash = STRATEGY_COLORS.get(strategy, GREY), REPAIR_DASHES.get(repair, "solid")
        front = pd.DataFrame(pareto_front(curve.to_dict("records")), columns=POINT_COLUMNS)
        hover = ("n = %{customdata[0]}<br>accuracy %{y:.2f}<br>speedup ×%{x:.2f} (ideal ×%{customdata[1]:.2f})"
                 "<extra>" + label + "</extra>")
        fig.add_trace(go.Scatter(x=curve.speedup, y=curve.accuracy, mode="markers", name=label, legendgroup=label,
                                 marker=dict(color=color, opacity=0.35, size=8), showlegend=False,
                                 customdata=curve[["n", "ideal_speedup"]].to_numpy(), hovertemplate=hover))
        fig.add_trace(go.Scatter(x=front.speedup, y=front.accuracy, mode="lines+markers+text", name=f"{label} (Pareto front)",
                                 legendgroup=label, line=dict(color=color, dash=dash), marker=dict(color=color, size=9),
                                 text=[f"n={n}" for n in front.n], textposition="top center",
                                 customdata=front[["n", "ideal_speedup"]].to_numpy(), hovertemplate=hover))
    if not frame.empty:
        chance = float(frame.chance.iloc[0])
        fig.add_hline(y=chance, line=dict(color="gray", dash="dot"), annotation_text=f"random guess ({chance:.0%})",
                      annotation_position="bottom right")
    fig.update_layout(title=title("Accuracy vs measured speedup: what each strategy buys"), height=420, margin=MARGIN,
                      xaxis=dict(title="measured decode speedup at batch 1 (× the unpruned model)"),
                      yaxis=dict(title="accuracy", range=[0, 1]), legend=LEGEND_BELOW, hovermode="closest")
    return fig


def generation_figure(points: list[dict], x_max: float | None = None) -> go.Figure:
    """Accuracy by generation (bold, its 95% Wilson band) beside the likelihood accuracy of the same
    questions' curve (thin), per curve: where the two part is what log-likelihood scoring hides."""
    frame = points_frame(points)
    frame = frame[frame.gen_accuracy.notna()]
    fig = go.Figure()
    for strategy, repair, label, curve in _curves(frame):
        color, dash = STRATEGY_COLORS.get(strategy, GREY), REPAIR_DASHES.get(repair, "solid")
        band = dict(mode="lines", line=dict(width=0), hoverinfo="skip", showlegend=False, legendgroup=label)
        fig.add_trace(go.Scatter(x=curve.fraction, y=curve.gen_ci_high, **band))
        fig.add_trace(go.Scatter(x=curve.fraction, y=curve.gen_ci_low, fill="tonexty", fillcolor=rgba(color, 0.15), **band))
        fig.add_trace(go.Scatter(
            x=curve.fraction, y=curve.gen_accuracy, mode="lines+markers", name=f"{label} by generation", legendgroup=label,
            line=dict(color=color, dash=dash, width=3), marker=dict(symbol="diamond", size=9),
            customdata=curve[["n", "gen_ci_low", "gen_ci_high"]].to_numpy(),
            hovertemplate="n = %{customdata[0]} (%{x:.0%})<br>by generation %{y:.2f} "
            "[%{customdata[1]:.2f}, %{customdata[2]:.2f}]<extra>" + label + "</extra>",
        ))
        fig.add_trace(go.Scatter(
            x=curve.fraction, y=curve.accuracy, mode="lines", name=f"{label} by likelihood", legendgroup=label,
            line=dict(color=rgba(color, 0.5), dash=dash, width=1),
            hovertemplate="n = %{x:.0%}<br>by likelihood %{y:.2f}<extra>" + label + "</extra>",
        ))
    task = frame.gen_task.iloc[0] if not frame.empty else ""
    return _layout(fig, f"Accuracy by generation ({task}) beside likelihood vs layers dropped", "accuracy", x_max, range=[0, 1])


def repetition_figure(points: list[dict], x_max: float | None = None) -> go.Figure:
    """The 4-gram repetition rate of the free continuations vs fraction dropped: 0 = no 4-gram
    repeats, 1 = a loop."""
    frame = points_frame(points)
    frame = frame[frame.repetition_4.notna()]
    fig = go.Figure()
    for strategy, repair, label, curve in _curves(frame):
        fig.add_trace(go.Scatter(
            x=curve.fraction, y=curve.repetition_4, mode="lines+markers", name=label,
            line=dict(color=STRATEGY_COLORS.get(strategy, GREY), dash=REPAIR_DASHES.get(repair, "solid")),
            customdata=curve[["n", "distinct_2", "reference_logprob"]].to_numpy(),
            hovertemplate="n = %{customdata[0]} (%{x:.0%})<br>4-gram repetition %{y:.2f}, distinct-2 %{customdata[1]:.2f}"
            "<br>unpruned model's log-prob per token %{customdata[2]:.2f}<extra>" + label + "</extra>",
        ))
    return _layout(fig, "Repetition in free continuations vs layers dropped", "4-gram repetition rate", x_max, range=[0, 1])

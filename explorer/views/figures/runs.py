"""The Runs page's figures: one run's plots by kind (what the page shows and exports), and two
runs' loss and accuracy on shared axes when both are heals or both are sweeps."""

from __future__ import annotations

from typing import TYPE_CHECKING

import plotly.graph_objects as go

from explorer.lm.blocks import default_size
from explorer.views.figures.style import BLUE, RED, finish_panels, interval_bars, loss_accuracy_panels

if TYPE_CHECKING:  # only annotations: drawing a run needs no store
    from explorer.state.store import Run

RUN_COLORS = (BLUE, RED)


def run_figures(run: Run, events: list[dict]) -> list[go.Figure]:
    """The run's plotly figures, for the kinds that have them (what the page shows and exports)."""
    from explorer.analysis.bootstrap import bootstrap
    from explorer.views.figures.heal import heal_figure
    from explorer.views.figures.metrics import metrics_figure
    from explorer.views.figures.similarity import heatmap_figure
    from explorer.views.figures.sweep import accuracy_figure, loss_figure
    from explorer.analysis.metrics import MetricScores
    from explorer.analysis.similarity import SimilarityResult

    if run.kind == "similarity" and run.result:
        similarity = SimilarityResult.from_json(run.result)
        return [heatmap_figure(similarity, boot=bootstrap(similarity))]
    if run.kind == "sweep" and (points := [e for e in events if e.get("kind") == "point"]):
        return [accuracy_figure(points), loss_figure(points)]
    if run.kind == "heal" and any(e.get("kind") in ("train", "eval") for e in events):
        return [heal_figure(events, run.settings["heal"]["steps"])]
    if run.kind == "metrics" and run.result:
        scores = MetricScores.from_json(run.result)
        return [metrics_figure(scores, default_size(scores.num_layers))]
    return []


def _heal_traces(fig: go.Figure, run: Run, events: list[dict], color: str) -> None:
    train = [e for e in events if e.get("kind") == "train"]
    evals = [e for e in events if e.get("kind") == "eval"]
    tag = f"#{run.id}"
    fig.add_scatter(x=[e["step"] for e in train], y=[e["train_loss"] for e in train], mode="lines", name=f"{tag} train loss",
                    line=dict(color=color, width=1), opacity=0.6, row=1, col=1)
    fig.add_scatter(x=[e["step"] for e in evals], y=[e["val_loss"] for e in evals], mode="lines+markers",
                    name=f"{tag} held-out loss", line=dict(color=color), row=1, col=1)
    accuracy = [e["accuracy"] for e in evals]
    fig.add_scatter(x=[e["step"] for e in evals], y=accuracy, mode="lines+markers",
                    name=f"{tag} accuracy", line=dict(color=color), row=1, col=2,
                    error_y=interval_bars(accuracy, [e["ci_low"] for e in evals], [e["ci_high"] for e in evals], thickness=1))


def _sweep_traces(fig: go.Figure, run: Run, events: list[dict], color: str) -> None:
    points = sorted((e for e in events if e.get("kind") == "point"), key=lambda p: (p["strategy"], p.get("healed", False), p["n"]))
    curves: dict[str, list[dict]] = {}
    for point in points:
        curves.setdefault(f"#{run.id} {point['strategy']}{' healed' if point.get('healed') else ''}", []).append(point)
    for dash, (name, curve) in zip(("solid", "dash", "dot", "dashdot", "longdash", "longdashdot"), curves.items()):
        line = dict(color=color, dash=dash)
        fig.add_scatter(x=[p["fraction"] for p in curve], y=[p["val_loss"] for p in curve], mode="lines+markers",
                        name=f"{name} loss", line=line, row=1, col=1)
        fig.add_scatter(x=[p["fraction"] for p in curve], y=[p["accuracy"] for p in curve], mode="lines+markers",
                        name=f"{name} accuracy", line=line, row=1, col=2)


TRACES = {"heal": (_heal_traces, "step"), "sweep": (_sweep_traces, "fraction of layers dropped")}


def comparison_figure(a: Run, events_a: list[dict], b: Run, events_b: list[dict]) -> go.Figure | None:
    """Loss and accuracy of both runs on shared axes, when both are heals or both are sweeps; else None."""
    if a.kind != b.kind or a.kind not in TRACES:
        return None
    add, x_title = TRACES[a.kind]
    fig = loss_accuracy_panels("Held-out loss")
    for run, events, color in ((a, events_a, RUN_COLORS[0]), (b, events_b, RUN_COLORS[1])):
        add(fig, run, events, color)
    return finish_panels(fig, 440, -0.25, title_text=x_title)

"""The Runs page's figures: one run's plots for each kind that has them (the run-kind registry,
explorer.kinds, picks them; what the page shows and exports), and two runs' loss and accuracy on
shared axes when both are heals or both are sweeps."""

from __future__ import annotations

import plotly.graph_objects as go

from explorer.analysis.bootstrap import bootstrap
from explorer.analysis.metrics import MetricScores
from explorer.analysis.similarity import SimilarityResult
from explorer.lm.blocks import default_size
from explorer.state.store import Run, of_kind
from explorer.views.figures.classify import accuracy_vs_k_figure
from explorer.views.figures.heal import heal_figure
from explorer.views.figures.metrics import metrics_figure
from explorer.views.figures.similarity import heatmap_figure
from explorer.views.figures.style import BLUE, RED, finish_panels, interval_bars, loss_accuracy_panels
from explorer.views.figures.sweep import accuracy_figure, generation_figure, loss_figure, repetition_figure, speed_figure

RUN_COLORS = (BLUE, RED)


def similarity_figures(run: Run, events: list[dict]) -> list[go.Figure]:
    if not run.result:
        return []
    similarity = SimilarityResult.from_json(run.result)
    return [heatmap_figure(similarity, boot=bootstrap(similarity))]


def sweep_figures(run: Run, events: list[dict]) -> list[go.Figure]:
    points = of_kind(events, "point")
    if not points:
        return []
    extra = [generation_figure(points)] if any(p.get("gen_accuracy") is not None for p in points) else []
    extra += [repetition_figure(points)] if any(p.get("repetition_4") is not None for p in points) else []
    extra += [speed_figure(points)] if any(p.get("speedup") is not None for p in points) else []
    return [accuracy_figure(points), loss_figure(points), *extra]


def heal_figures(run: Run, events: list[dict]) -> list[go.Figure]:
    measured = any(e.get("kind") in ("train", "eval") for e in events)
    return [heal_figure(events, run.settings["heal"]["steps"])] if measured else []


def metrics_figures(run: Run, events: list[dict]) -> list[go.Figure]:
    if not run.result:
        return []
    scores = MetricScores.from_json(run.result)
    return [metrics_figure(scores, default_size(scores.num_layers))]


def classify_figures(run: Run, events: list[dict]) -> list[go.Figure]:
    points = of_kind(events, "point")
    return [accuracy_vs_k_figure(points)] if points else []


def _heal_traces(fig: go.Figure, run: Run, events: list[dict], color: str) -> None:
    train = of_kind(events, "train")
    evals = of_kind(events, "eval")
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
    points = sorted(of_kind(events, "point"), key=lambda p: (p["strategy"], p.get("healed", False), p["n"]))
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

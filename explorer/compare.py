"""Two runs side by side: the settings that differ, and both runs' curves on shared axes.

What the Runs page shows when a second run is picked. A heal run's settings nest the LoRA
config one level down (`heal.rank`), so settings are flattened to dotted keys before they are
compared: one flat table of only the differing keys, instead of two truncated dicts.
"""

from __future__ import annotations

import json

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from explorer.store import Run

RUN_COLORS = ("#1f77b4", "#d62728")


def flat_settings(settings: dict, prefix: str = "") -> dict[str, str]:
    """{'heal': {'rank': 8}} -> {'heal.rank': '8'}; lists and scalars as JSON text."""
    flat: dict[str, str] = {}
    for key, value in settings.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flat_settings(value, f"{name}."))
        else:
            flat[name] = value if isinstance(value, str) else json.dumps(value)
    return flat


def settings_differences(a: Run, b: Run) -> pd.DataFrame:
    """One row per setting whose value differs (or exists in one run only), in first-seen order."""
    left, right = flat_settings(a.settings), flat_settings(b.settings)
    keys = [k for k in dict.fromkeys([*left, *right]) if left.get(k) != right.get(k)]
    return pd.DataFrame(
        {"setting": keys, f"#{a.id}": [left.get(k, "—") for k in keys], f"#{b.id}": [right.get(k, "—") for k in keys]}
    )


def _heal_traces(fig: go.Figure, run: Run, events: list[dict], color: str) -> None:
    train = [e for e in events if e.get("kind") == "train"]
    evals = [e for e in events if e.get("kind") == "eval"]
    tag = f"#{run.id}"
    fig.add_scatter(x=[e["step"] for e in train], y=[e["train_loss"] for e in train], mode="lines", name=f"{tag} train loss",
                    line=dict(color=color, width=1), opacity=0.6, row=1, col=1)
    fig.add_scatter(x=[e["step"] for e in evals], y=[e["val_loss"] for e in evals], mode="lines+markers",
                    name=f"{tag} held-out loss", line=dict(color=color), row=1, col=1)
    fig.add_scatter(x=[e["step"] for e in evals], y=[e["accuracy"] for e in evals], mode="lines+markers",
                    name=f"{tag} accuracy", line=dict(color=color), row=1, col=2,
                    error_y=dict(type="data", symmetric=False, array=[e["ci_high"] - e["accuracy"] for e in evals],
                                 arrayminus=[e["accuracy"] - e["ci_low"] for e in evals], thickness=1))


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
    fig = make_subplots(rows=1, cols=2, subplot_titles=("Held-out loss", "Accuracy"), horizontal_spacing=0.08)
    for run, events, color in ((a, events_a, RUN_COLORS[0]), (b, events_b, RUN_COLORS[1])):
        add(fig, run, events, color)
    fig.update_xaxes(title_text=x_title)
    fig.update_yaxes(range=[0, 1], tickformat=".0%", row=1, col=2)
    fig.update_layout(height=440, margin=dict(t=40, b=40, l=40, r=20), legend=dict(orientation="h", y=-0.25))
    return fig

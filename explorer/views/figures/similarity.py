"""Plotly figures and tables for a similarity result: the (l, n) heatmap, min distance vs n, CSV rows.

The heatmap draws each cell as a square scatter marker rather than a `go.Heatmap`, because
Streamlit's `st.plotly_chart(on_select=...)` returns an empty selection when a heatmap cell is
clicked (streamlit issues #8760, #15042) while scatter points come back with their customdata.
Every trace carries customdata [l, n], so a click on a cell, a marker or the highlight all
resolve to the same block. Marker sizes are in pixels, so the figure has a fixed size chosen
from the number of layers to make the squares tile the grid.
"""

from __future__ import annotations

from typing import Literal

import pandas as pd
import plotly.graph_objects as go

from explorer.analysis.bootstrap import STABLE_FROM, Bootstrap
from explorer.analysis.similarity import SimilarityResult
from explorer.lm.blocks import Block, LayerSet
from explorer.views.figures.style import GREY, LEGEND_ABOVE, MARGIN, STRATEGY_COLORS, interval_bars, title

YAxis = Literal["n", "fraction"]

COLORSCALE = "Viridis"
HEATMAP_MARGIN = dict(l=70, r=20, t=80, b=60)
COLORBAR_SPACE = 90  # pixels right of the grid for the colour bar
FULL_OPACITY = dict(marker=dict(opacity=1))  # keep every marker bright after a click selects one
LEGEND = ("Click a cell to select the block [l, l+n). ☆ the best block, the row's minimum over blocks that keep "
          "the final layer (the block the paper drops); ○ a lower cell that would remove the final layer, so it "
          "is not chosen; ✕ the simple strategy (deepest n layers, keeping the last).")  # the heatmap's markers


def cell_pixels(num_layers: int) -> int:
    """Side of one cell: the grid is ~540 px for any depth, but cells stay between 6 and 24 px."""
    return max(6, min(24, 540 // num_layers))


NOT_CHOSEN = "lower, but removes the final layer, which the paper keeps: not chosen"


def distances_frame(result: SimilarityResult, boot: Bootstrap | None = None) -> pd.DataFrame:
    """One row per block (n, l): its distance, whether it is the best block (`best_block`), a row
    minimum that removes the final layer, or the simple block; with a bootstrap, the distance's
    interval and how often the block is chosen (blocks that remove the final layer never are)."""
    optimal = {(row["n"], row["layer"]) for row in result.optimal}
    unrestricted = {(row["n"], row["layer"]) for row in result.unrestricted_minima}
    simple = {(row["n"], row["layer"]) for row in result.simple}
    rows = [
        {
            "n": n,
            "l": l,
            "layers_removed": Block(l, n, result.num_layers).span,
            "distance": distance,
            "is_optimal": (n, l) in optimal,
            "is_unrestricted_min": (n, l) in unrestricted,
            "is_simple": (n, l) in simple,
            **(_uncertainty(boot, n, l) if boot else {}),
        }
        for n, row in enumerate(result.distances, 1)
        for l, distance in enumerate(row)
    ]
    return pd.DataFrame(rows)


def _uncertainty(boot: Bootstrap, n: int, l: int) -> dict:
    chosen = boot.stability[n - 1] if n <= len(boot.stability) else []
    return {"ci_low": boot.ci_low[n - 1][l], "ci_high": boot.ci_high[n - 1][l],
            "stability": chosen[l] if l < len(chosen) else 0.0}


def _hover_notes(frame: pd.DataFrame, boot: Bootstrap | None) -> pd.Series:
    """The hover's last line: the interval, how often the star is chosen, why a lower cell is not."""
    def note(row) -> str:
        parts = [f"{boot.level:.0%} interval [{row.ci_low:.4f}, {row.ci_high:.4f}]"] if boot else []
        if row.is_optimal:
            parts.append("best block" + (f": {boot.hover_line(row.n, row.l)}" if boot else ""))
        if row.is_unrestricted_min:
            parts.append(NOT_CHOSEN)
        return "<br>".join(parts)

    return frame.apply(note, axis=1) if len(frame) else pd.Series(dtype=str)


def row_scaled(frame: pd.DataFrame) -> pd.Series:
    """Each row's distances rescaled to [0, 1], as in the paper's heatmaps (a one-cell row is 0)."""
    by_row = frame.groupby("n")["distance"]
    low, span = by_row.transform("min"), by_row.transform("max") - by_row.transform("min")
    return ((frame["distance"] - low) / span.where(span > 0, 1.0)).fillna(0.0)


def _y(frame: pd.DataFrame, num_layers: int, y_axis: YAxis) -> pd.Series:
    return frame["n"] / num_layers if y_axis == "fraction" else frame["n"]


def _points(frame: pd.DataFrame, num_layers: int, y_axis: YAxis, **trace) -> go.Scatter:
    """A scatter trace over some cells, with the (l, n) customdata and hover every trace shares."""
    return go.Scatter(
        x=frame["l"],
        y=_y(frame, num_layers, y_axis),
        mode="markers",
        customdata=frame[["l", "n", "layers_removed", "distance", "note"]].to_numpy(),
        hovertemplate="l = %{customdata[0]}, n = %{customdata[1]}<br>removes layers %{customdata[2]}"
        "<br>distance %{customdata[3]:.4f}<br>%{customdata[4]}<extra>%{fullData.name}</extra>",
        selected=FULL_OPACITY,
        unselected=FULL_OPACITY,
        **trace,
    )


def _cells(frame: pd.DataFrame, num_layers: int, y_axis: YAxis, size: int, scaled: bool) -> go.Scatter:
    """The coloured squares; one pixel larger than the cell so neighbours overlap without hairline gaps."""
    title = "distance,<br>each row<br>rescaled<br>to [0, 1]" if scaled else "angular<br>distance"
    return _points(
        frame, num_layers, y_axis, name="block (l, n)", showlegend=False,
        marker=dict(
            symbol="square", size=size + 1, color=row_scaled(frame) if scaled else frame["distance"],
            colorscale=COLORSCALE, line=dict(width=0), colorbar=dict(title=dict(text=title), thickness=14),
        ),
    )


def _markers(frame: pd.DataFrame, num_layers: int, y_axis: YAxis, name: str, size: int, **marker) -> go.Scatter:
    return _points(frame, num_layers, y_axis, name=name, marker=dict(size=size, **marker))


def _chosen_layers(name: str, sets: list[LayerSet], num_layers: int, y_axis: YAxis, size: int) -> go.Scatter:
    """One strategy's choices for every n, drawn in row n at each layer it removes (so a set that is
    not one block shows as its scattered layers). No customdata: a click on them selects nothing."""
    xs, ys, notes = [], [], []
    for layers in sets:
        for l in layers.removed:
            xs.append(l)
            ys.append(layers.n / num_layers if y_axis == "fraction" else layers.n)
            notes.append(f"n = {layers.n}: {name} removes layers {layers.span}")
    return go.Scatter(x=xs, y=ys, mode="markers", name=f"{name}: layers it removes (row n)", text=notes,
                      hovertemplate="%{text}<extra></extra>", selected=FULL_OPACITY, unselected=FULL_OPACITY,
                      marker=dict(symbol="diamond", size=size, color=STRATEGY_COLORS.get(name, GREY),
                                  line=dict(color="white", width=1)))


def _axes(fig: go.Figure, num_layers: int, y_axis: YAxis) -> None:
    """Ranges pinned to the cell edges, so cell (l, n) sits at a known pixel and squares tile exactly."""
    cells_per_y_unit = num_layers if y_axis == "fraction" else 1
    fig.update_xaxes(title="first layer l", range=[-0.5, num_layers - 0.5], dtick=max(1, num_layers // 15),
                     showgrid=False, zeroline=False, constrain="domain", scaleanchor="y", scaleratio=1 / cells_per_y_unit)
    if y_axis == "fraction":
        fig.update_yaxes(title="fraction of layers n / L", tickformat=".0%",
                         range=[0.5 / num_layers, (num_layers + 0.5) / num_layers])
    else:
        fig.update_yaxes(title="block size n", range=[0.5, num_layers + 0.5], dtick=max(1, num_layers // 15))
    fig.update_yaxes(showgrid=False, zeroline=False)


def heatmap_figure(
    result: SimilarityResult, selected: tuple[int, int] | None = None, y_axis: YAxis = "n",
    scaled: bool = False, boot: Bootstrap | None = None, chosen: dict[str, list[LayerSet]] | None = None,
) -> go.Figure:
    """Angular distance by (first layer l, block size n); best blocks, lower cells that would remove
    the final layer, and the simple block marked.

    `selected` is (l, n) of the picked block, outlined in red. `scaled` colours each row rescaled
    to [0, 1] (the paper's figure style); `boot` adds intervals and stability to the hover.
    `chosen` maps other strategies to their set for each n, drawn as the layers each removes.
    """
    L = result.num_layers
    cell = cell_pixels(L)
    frame = distances_frame(result, boot)
    frame["note"] = _hover_notes(frame, boot)
    fig = go.Figure(_cells(frame, L, y_axis, cell, scaled))
    fig.add_trace(_markers(frame[frame.is_simple], L, y_axis, "simple: drop deepest n (keep last)", max(4, cell // 2),
                           symbol="x", color="black", line=dict(color="white", width=1)))
    fig.add_trace(_markers(frame[frame.is_optimal], L, y_axis, "best block l* (keeps the final layer)",
                           max(5, cell * 2 // 3), symbol="star", color="white", line=dict(color="black", width=1)))
    if frame.is_unrestricted_min.any():
        fig.add_trace(_markers(frame[frame.is_unrestricted_min], L, y_axis,
                               "row minimum removing the final layer (not chosen)", max(5, cell * 2 // 3),
                               symbol="circle-open", color="red", line=dict(width=2)))
    for name, sets in (chosen or {}).items():
        fig.add_trace(_chosen_layers(name, sets, L, y_axis, max(4, cell // 2)))
    if selected is not None:
        picked = frame[(frame.l == selected[0]) & (frame.n == selected[1])]
        fig.add_trace(_markers(picked, L, y_axis, "selected block", cell + 2, symbol="square-open",
                               color="red", line=dict(width=3)))
    _axes(fig, L, y_axis)
    fig.update_layout(
        width=HEATMAP_MARGIN["l"] + HEATMAP_MARGIN["r"] + L * cell + COLORBAR_SPACE,
        height=HEATMAP_MARGIN["t"] + HEATMAP_MARGIN["b"] + L * cell,
        margin=HEATMAP_MARGIN,
        title=title(f"{result.model}: d(x<sup>l</sup>, x<sup>l+n</sup>) over {result.samples} samples"),
        legend=dict(**LEGEND_ABOVE, bgcolor="rgba(0,0,0,0)"),
        plot_bgcolor="white",
        hovermode="closest",
        hoverdistance=-1,
    )
    return fig


def min_distance_figure(result: SimilarityResult, boot: Bootstrap | None = None) -> go.Figure:
    """The best block's distance for each block size n, against n and against n / L, with its
    bootstrap interval and how often it is chosen when a bootstrap is given."""
    L = result.num_layers
    n = [row["n"] for row in result.optimal]
    distance = [row["distance"] for row in result.optimal]
    starts = [row["layer"] for row in result.optimal]
    notes = [boot.hover_line(k, s) if boot else "" for k, s in zip(n, starts)]
    error_y = None
    if boot:
        error_y = interval_bars(distance, [boot.ci_low[k - 1][s] for k, s in zip(n, starts)],
                                [boot.ci_high[k - 1][s] for k, s in zip(n, starts)])
    fig = go.Figure(go.Scatter(
        x=n, y=distance, mode="lines+markers", name="best block", error_y=error_y,
        customdata=[[s, k / L, note] for s, k, note in zip(starts, n, notes)],
        hovertemplate="n = %{x} (%{customdata[1]:.0%} of layers)<br>best l* = %{customdata[0]}"
        "<br>distance %{y:.4f}<br>%{customdata[2]}<extra></extra>",
    ))
    ticks = list(range(0, L + 1, max(1, L // 6)))[1:] or [L]
    fig.update_layout(
        title=title("Best block's distance for each block size"),
        xaxis=dict(title="block size n (fraction of layers n / L)", range=[0.5, L + 0.5],
                   tickvals=ticks, ticktext=[f"{k}<br>{k / L:.0%}" for k in ticks]),
        yaxis=dict(title="min angular distance", rangemode="tozero"),
        height=400, margin=dict(l=60, r=20, t=60, b=60), showlegend=False,
    )
    return fig


def stability_figure(result: SimilarityResult, boot: Bootstrap) -> go.Figure:
    """For each n, the share of resamples choosing the best block l* (bar, labelled with l*) and
    the runner-up's share: a low bar means the calibration data does not pin the block down."""
    optimal = result.optimal
    n = [row["n"] for row in optimal]
    share = [boot.stability[k - 1][row["layer"]] for k, row in zip(n, optimal)]
    runner = [boot.runner_up(k, row["layer"]) for k, row in zip(n, optimal)]
    fig = go.Figure([
        go.Bar(x=n, y=share, name="best block l*", text=[row["layer"] for row in optimal], textposition="inside",
               customdata=[boot.hover_line(k, row["layer"]) for k, row in zip(n, optimal)],
               hovertemplate="n = %{x}: l* = %{text}<br>%{customdata}<extra></extra>"),
        go.Bar(x=n, y=[r[1] if r else 0 for r in runner], name="runner-up", text=[r[0] if r else "" for r in runner],
               textposition="inside", hovertemplate="n = %{x}: runner-up layer %{text}, %{y:.0%}<extra></extra>"),
    ])
    fig.add_hline(y=STABLE_FROM, line_dash="dot", annotation_text="unstable below", annotation_position="bottom right")
    fig.update_layout(
        title=title(f"How often each block is chosen ({boot.draws} resamples of the samples)"),
        xaxis_title="block size n (bar label: first layer)", yaxis=dict(title="share of resamples", tickformat=".0%",
                                                                        range=[0, 1]),
        barmode="group", height=320, margin=MARGIN, legend=LEGEND_ABOVE,
    )
    return fig

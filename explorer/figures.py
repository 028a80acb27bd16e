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

from explorer.blocks import Block
from explorer.errors import ExplorerError
from explorer.similarity import SimilarityResult

YAxis = Literal["n", "fraction"]

COLORSCALE = "Viridis"
MARGIN = dict(l=70, r=20, t=80, b=60)
COLORBAR_SPACE = 90  # pixels right of the grid for the colour bar
FULL_OPACITY = dict(marker=dict(opacity=1))  # keep every marker bright after a click selects one


def cell_pixels(num_layers: int) -> int:
    """Side of one cell: the grid is ~540 px for any depth, but cells stay between 6 and 24 px."""
    return max(6, min(24, 540 // num_layers))


def distances_frame(result: SimilarityResult) -> pd.DataFrame:
    """One row per block (n, l) with its distance and whether it is the row minimum or the simple block."""
    optimal = {(row["n"], row["layer"]) for row in result.optimal}
    simple = {(row["n"], row["layer"]) for row in result.simple}
    rows = [
        {
            "n": n,
            "l": l,
            "layers_removed": Block(l, n, result.num_layers).span,
            "distance": distance,
            "is_optimal": (n, l) in optimal,
            "is_simple": (n, l) in simple,
        }
        for n, row in enumerate(result.distances, 1)
        for l, distance in enumerate(row)
    ]
    return pd.DataFrame(rows)


def _y(frame: pd.DataFrame, num_layers: int, y_axis: YAxis) -> pd.Series:
    return frame["n"] / num_layers if y_axis == "fraction" else frame["n"]


def _points(frame: pd.DataFrame, num_layers: int, y_axis: YAxis, **trace) -> go.Scatter:
    """A scatter trace over some cells, with the (l, n) customdata and hover every trace shares."""
    return go.Scatter(
        x=frame["l"],
        y=_y(frame, num_layers, y_axis),
        mode="markers",
        customdata=frame[["l", "n", "layers_removed", "distance"]].to_numpy(),
        hovertemplate="l = %{customdata[0]}, n = %{customdata[1]}<br>removes layers %{customdata[2]}"
        "<br>distance %{customdata[3]:.4f}<extra>%{fullData.name}</extra>",
        selected=FULL_OPACITY,
        unselected=FULL_OPACITY,
        **trace,
    )


def _cells(frame: pd.DataFrame, num_layers: int, y_axis: YAxis, size: int) -> go.Scatter:
    """The coloured squares; one pixel larger than the cell so neighbours overlap without hairline gaps."""
    return _points(
        frame, num_layers, y_axis, name="block (l, n)", showlegend=False,
        marker=dict(
            symbol="square", size=size + 1, color=frame["distance"], colorscale=COLORSCALE, line=dict(width=0),
            colorbar=dict(title=dict(text="angular<br>distance"), thickness=14),
        ),
    )


def _markers(frame: pd.DataFrame, num_layers: int, y_axis: YAxis, name: str, size: int, **marker) -> go.Scatter:
    return _points(frame, num_layers, y_axis, name=name, marker=dict(size=size, **marker))


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
    result: SimilarityResult, selected: tuple[int, int] | None = None, y_axis: YAxis = "n"
) -> go.Figure:
    """Angular distance by (first layer l, block size n); row minima and the simple block marked.

    `selected` is (l, n) of the picked block, outlined in red.
    """
    L = result.num_layers
    cell = cell_pixels(L)
    frame = distances_frame(result)
    fig = go.Figure(_cells(frame, L, y_axis, cell))
    fig.add_trace(_markers(frame[frame.is_simple], L, y_axis, "simple: drop deepest n (keep last)", max(4, cell // 2),
                           symbol="x", color="black", line=dict(color="white", width=1)))
    fig.add_trace(_markers(frame[frame.is_optimal], L, y_axis, "minimum of row n (optimal l*)", max(5, cell * 2 // 3),
                           symbol="star", color="white", line=dict(color="black", width=1)))
    if selected is not None:
        chosen = frame[(frame.l == selected[0]) & (frame.n == selected[1])]
        fig.add_trace(_markers(chosen, L, y_axis, "selected block", cell + 2, symbol="square-open",
                               color="red", line=dict(width=3)))
    _axes(fig, L, y_axis)
    fig.update_layout(
        width=MARGIN["l"] + MARGIN["r"] + L * cell + COLORBAR_SPACE,
        height=MARGIN["t"] + MARGIN["b"] + L * cell,
        margin=MARGIN,
        title=dict(text=f"{result.model}: d(x<sup>l</sup>, x<sup>l+n</sup>) over {result.samples} samples", font_size=14),
        legend=dict(orientation="h", x=0, y=1.0, yanchor="bottom", bgcolor="rgba(0,0,0,0)"),
        plot_bgcolor="white",
        hovermode="closest",
        hoverdistance=-1,
    )
    return fig


def min_distance_figure(result: SimilarityResult) -> go.Figure:
    """The lowest distance reachable for each block size n, against n and against n / L."""
    L = result.num_layers
    n = [row["n"] for row in result.optimal]
    distance = [row["distance"] for row in result.optimal]
    starts = [row["layer"] for row in result.optimal]
    fig = go.Figure(go.Scatter(
        x=n, y=distance, mode="lines+markers", name="min over l",
        customdata=[[s, k / L] for s, k in zip(starts, n)],
        hovertemplate="n = %{x} (%{customdata[1]:.0%} of layers)<br>best l* = %{customdata[0]}"
        "<br>distance %{y:.4f}<extra></extra>",
    ))
    ticks = list(range(0, L + 1, max(1, L // 6)))[1:] or [L]
    fig.update_layout(
        title=dict(text="Smallest distance for each block size", font_size=14),
        xaxis=dict(title="block size n (fraction of layers n / L)", range=[0.5, L + 0.5],
                   tickvals=ticks, ticktext=[f"{k}<br>{k / L:.0%}" for k in ticks]),
        yaxis=dict(title="min angular distance", rangemode="tozero"),
        height=400, margin=dict(l=60, r=20, t=60, b=60), showlegend=False,
    )
    return fig


def figure_png(fig: go.Figure, scale: float = 2.0) -> bytes:
    """PNG through kaleido, which drives a local Chrome/Chromium (kaleido >= 1 ships none)."""
    try:
        return fig.to_image(format="png", scale=scale)
    except Exception as exc:  # kaleido raises its own types for a missing or crashing browser
        raise ExplorerError(
            f"PNG export needs Chrome or Chromium for kaleido ({type(exc).__name__}); "
            "use the camera button on the chart or the HTML download instead."
        ) from exc


def png_export_available() -> bool:
    """Whether kaleido can find a Chrome/Chromium (it honours the BROWSER_PATH environment variable)."""
    try:
        from choreographer.browsers.chromium import Chromium

        return Chromium.find_browser(skip_local=False) is not None
    except ImportError:
        return False

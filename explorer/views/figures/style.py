"""What the figure modules share, so every page's plots look alike: the palette, the title font,
the margins and legend placements, and the loss | accuracy pair of panels (the live heal plot
and the Runs page's comparison)."""

from __future__ import annotations

from typing import Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

# plotly's default (D3) colours, named so a strategy, metric, mode or run keeps its colour on every page
BLUE, ORANGE, GREEN, RED, PURPLE, GREY, DARK = "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#7f7f7f", "#2b2b2b"
BROWN, PINK, OLIVE, CYAN = "#8c564b", "#e377c2", "#bcbd22", "#17becf"
STRATEGY_COLORS = {"similarity": BLUE, "simple": ORANGE, "top-cut": GREEN, "block-influence": RED, "iterative-loss": PURPLE,
                   "iterative-angular": BROWN, "attention-drop": PINK, "mlp-drop": OLIVE}  # one colour per strategy, every page

MARGIN = dict(l=60, r=20, t=60, b=50)  # a titled plot with its legend below
PANEL_MARGIN = dict(t=40, b=40, l=40, r=20)  # two subplots whose titles name them
LEGEND_BELOW = dict(orientation="h", y=-0.2)
LEGEND_ABOVE = dict(orientation="h", x=0, y=1.0, yanchor="bottom")


def title(text: str) -> dict:
    """A figure title in the size every page uses."""
    return dict(text=text, font_size=14)


def rgba(hex_color: str, alpha: float) -> str:
    """'#1f77b4', 0.15 -> 'rgba(31,119,180,0.15)': a line's colour, translucent, for its band."""
    r, g, b = (int(hex_color[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def interval_bars(value: Sequence[float], low: Sequence[float], high: Sequence[float], **style) -> dict:
    """Asymmetric error bars from an interval's ends (plotly wants the distances from the value)."""
    return dict(type="data", symmetric=False, array=[h - v for v, h in zip(value, high)],
                arrayminus=[v - lo for v, lo in zip(value, low)], **style)


def loss_accuracy_panels(loss_title: str) -> go.Figure:
    """Two side-by-side subplots: loss (row 1, col 1) and accuracy (row 1, col 2)."""
    return make_subplots(rows=1, cols=2, subplot_titles=(loss_title, "Accuracy"), horizontal_spacing=0.08)


def finish_panels(fig: go.Figure, height: int, legend_y: float, **xaxes) -> go.Figure:
    """The shared axes and layout of `loss_accuracy_panels`: accuracy as a percentage in [0, 1]."""
    fig.update_xaxes(**xaxes)
    fig.update_yaxes(range=[0, 1], tickformat=".0%", row=1, col=2)
    fig.update_layout(height=height, margin=PANEL_MARGIN, legend=dict(orientation="h", y=legend_y))
    return fig

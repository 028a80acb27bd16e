"""A figure as a file: PNG through kaleido, and one self-contained HTML page for several figures
(the Similarity and Runs pages' downloads)."""

from __future__ import annotations

import plotly.graph_objects as go

from explorer.core.errors import ExplorerError


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
        from choreographer.browsers.chromium import Chromium  # deferred: kaleido's Chromium driver loads only for PNG export

        return Chromium.find_browser(skip_local=False) is not None
    except ImportError:
        return False


def figures_html(figures: list[go.Figure]) -> str:
    """All figures in one self-contained HTML page (plotly.js inlined once, works offline)."""
    parts = [fig.to_html(full_html=False, include_plotlyjs=(i == 0)) for i, fig in enumerate(figures)]
    return "<!DOCTYPE html><html><head><meta charset='utf-8'></head><body>" + "".join(parts) + "</body></html>"

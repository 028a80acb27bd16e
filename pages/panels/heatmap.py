"""The Similarity page's block panel (the picked block checked, described and handed to the Prune page)
and its downloads (CSV, HTML, PNG when kaleido finds a browser)."""

from __future__ import annotations

import streamlit as st

from explorer.analysis.bootstrap import Bootstrap, block_notes, selection_text
from explorer.analysis.similarity import SimilarityResult
from explorer.lm.blocks import check_block
from explorer.lm.models import LoadedModel
from explorer.surgery.prune import removed_parameters
from explorer.views.figures.export import figure_png, png_export_available
from explorer.views.figures.similarity import distances_frame
from pages import download_row
from pages.panels.model import MODEL_KEY

RESULT_KEY = "similarity_result"  # {"run_id", "result" (json), "fingerprint", "from_cache"}
BLOCK_KEY = "selected_block"  # read by the prune page
CHART_KEY = "similarity_chart"
START_KEY, SIZE_KEY = "block_start", "block_n"

BLOCK_KEY = "selected_block"  # the block picked on the heatmap, read by the Prune page (pages.panels.layer_picker)



def show_block(loaded: LoadedModel, result: SimilarityResult, boot: Bootstrap | None, run_id: int, start: int,
               n: int) -> None:
    """Validate the picked block, say what it removes and how sure the best block for n is, and
    hand it to the prune page."""
    st.session_state.pop(BLOCK_KEY, None)
    block = check_block(start, n, result.num_layers, allow_final=True)
    st.success(selection_text(result, boot, block, removed_parameters(loaded, block)))
    for note in block_notes(result, boot, block):
        st.warning(note)
    st.session_state[BLOCK_KEY] = {"start": start, "n": n, "num_layers": result.num_layers, "similarity_run": run_id,
                                   "model": st.session_state[MODEL_KEY]}



def downloads(result: SimilarityResult, boot: Bootstrap | None, fig) -> None:
    """CSV and HTML always; PNG when kaleido finds a Chrome/Chromium. Files are built on click."""
    stem = f"similarity-{result.num_layers}-layers-{result.samples}-samples"
    png = png_export_available()
    download_row([("Matrix (CSV)", distances_frame(result, boot).to_csv(index=False), f"{stem}.csv", "text/csv", None),
                  ("Figure (HTML)", lambda: fig.to_html(include_plotlyjs=True), f"{stem}.html", "text/html", None)]
                 + ([("Figure (PNG)", lambda: figure_png(fig), f"{stem}.png", "image/png", None)] if png else []),
                 None if png else "PNG export needs Chrome/Chromium for kaleido; use the camera button on the chart.")

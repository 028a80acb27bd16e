"""Similarity heatmap: run calibration text through a model, explore d(x^l, x^(l+n)), pick a block.

The picked block lands in st.session_state["selected_block"] for the prune page. Results come
from the SQLite store whenever the same model + text + settings ran before, and a fresh session
shows this visitor's newest saved run for the model (explorer.views.session), so a reload or
restart is instant; a Run survives a closed tab or a second click (pages/panels/progress.py).
"""

from __future__ import annotations

import streamlit as st

from explorer.analysis.bootstrap import bootstrap, summary
from explorer.analysis.similarity import SimilarityResult
from explorer.core.paths import explorer_home
from explorer.lm.blocks import default_size
from explorer.lm.data import save_upload
from explorer.lm.models import LoadedModel
from explorer.state.cache import cached_distances
from explorer.state.store import Run
from explorer.views.figures.similarity import LEGEND, heatmap_figure, min_distance_figure, stability_figure
from explorer.views.forms.similarity import SOURCES, kept_result, shown_result, similarity_widgets
from explorer.views.progress import estimate_similarity, estimate_text, machine_load
from explorer.views.runs import similarity_caption, similarity_label
from explorer.views.session import page_runs
from explorer.views.text import plain
from pages import get_store, show_page, user_errors, viewer, visitor, visitor_policy
from pages.panels.chosen_layers import marked_sets
from pages.panels.heatmap import downloads, show_block
from pages.panels.model import current_model, model_picker
from pages.panels.progress import steady_progress
from pages.panels.sublayers import sublayer_panel

RESULT_KEY = "similarity_result"  # {"run_id", "result" (json), "fingerprint", "from_cache"}
CHART_KEY = "similarity_chart"
START_KEY, SIZE_KEY = "block_start", "block_n"


def data_source() -> str | None:
    """The calibration source: 'embedded', 'c4' or a file path; None until a file is given. A path
    on the server is offered only where the operator allows it (explorer.core.policy)."""
    choices = [label for label, value in SOURCES.items() if value != "path" or visitor_policy().server_paths]
    choice = SOURCES[st.radio("Calibration text", choices, horizontal=True, key="sim_source")]
    if choice == "upload":
        upload = st.file_uploader("Text file (.txt: blank-line separated documents; .jsonl / .parquet: field `text`)",
                                  type=["txt", "jsonl", "parquet"], key="sim_upload",
                                  help="At most 20 MB (.streamlit/config.toml); only the start of each document is read.")
        with user_errors():
            return str(save_upload(upload.name, upload, explorer_home() / "uploads")) if upload else None
    if choice == "path":
        return st.text_input("Path to a .txt, .jsonl or .parquet file", key="sim_path").strip() or None
    return choice


def calibration_settings() -> dict:
    """Samples, sequence length and batch size; validated by the backend so messages agree with the CLI."""
    left, middle, right = st.columns(3)
    return {
        "samples": left.number_input("Samples", value=32, step=8, key="sim_samples",
                                     help="Documents from the text, in order; the paper averages over many."),
        "seq_len": middle.number_input("Tokens per sample", value=256, step=64, key="sim_seq_len"),
        "batch_size": right.number_input("Batch size", value=8, step=1, key="sim_batch",
                                         help="Only speed and memory; the distances do not depend on it."),
    }


def run_calibration(loaded: LoadedModel, source: str, settings: dict) -> None:
    """Compute (or fetch) the distances with a progress bar, and keep them in the session (and, as
    one of this visitor's runs, in the store)."""
    unit = "layers (streamed)" if st.session_state.get("sim_stream", False) else "samples"
    with steady_progress("Preparing samples…") as update:
        run_id, result, from_cache = cached_distances(
            loaded, source, int(settings["samples"]), int(settings["seq_len"]), int(settings["batch_size"]),
            store=get_store(), progress=lambda done, total: update(done / total, f"Forward passes: {done} / {total} {unit}"))
    get_store().add_visitor(run_id, visitor())
    st.session_state[RESULT_KEY] = shown_result(run_id, result, loaded.fingerprint, from_cache,
                                                {**settings, "source": source})


def show_saved(loaded: LoadedModel, run: Run) -> None:
    """Show a saved run and set the form to its settings, so the form always matches the heatmap
    (called before the form is drawn, or as a button callback)."""
    st.session_state[RESULT_KEY] = shown_result(run.id, SimilarityResult.from_json(run.result), loaded.fingerprint,
                                                True, run.settings)
    st.session_state.update(similarity_widgets(run.settings, explorer_home() / "uploads"))


def saved_run_picker(loaded: LoadedModel, runs: list[Run]) -> None:
    """Let the user switch to an older saved run (main shows the newest on a fresh session)."""
    with st.expander(f"Saved runs for this model ({len(runs)})"):
        by_id = {r.id: r for r in runs}
        chosen = st.selectbox("Saved run", list(by_id), format_func=lambda i: similarity_label(by_id[i]), key="sim_saved")
        st.button("Show this run", key="sim_load", on_click=show_saved, args=(loaded, by_id[chosen]))


def on_chart_select() -> None:
    """A click on a cell (or a marker on it) sets the block inputs; an empty selection keeps them."""
    points = st.session_state[CHART_KEY].selection.points
    if points and "customdata" in points[0]:
        start, n = points[0]["customdata"][:2]
        st.session_state[START_KEY], st.session_state[SIZE_KEY] = int(start), int(n)


def default_block(result: SimilarityResult) -> None:
    """Until the user picks, select the best block for n = L/4 (the paper's regime of little loss)."""
    if START_KEY not in st.session_state:
        best = result.best_block(default_size(result.num_layers))
        st.session_state[START_KEY], st.session_state[SIZE_KEY] = best.start, best.n


def block_inputs() -> tuple[int, int]:
    """The block's numbers, set by clicks and by `default_block` through session state; passed as
    defaults too, so inputs the browser mounts late start there (see pages/sweep.settings_form)."""
    left, right = st.columns(2)
    start = left.number_input("First layer l", min_value=0, value=st.session_state[START_KEY], step=1, key=START_KEY)
    n = right.number_input("Block size n", min_value=1, value=st.session_state[SIZE_KEY], step=1, key=SIZE_KEY)
    return int(start), int(n)


def results(loaded: LoadedModel, run_id: int, result: SimilarityResult, from_cache: bool, settings: dict) -> None:
    """Block panel above the heatmap (so a click's effect is in view), the min-distance plot beside it
    (it wraps below on narrow screens), then the downloads."""
    st.caption(plain(similarity_caption(run_id, result.model, result.num_layers, from_cache, settings, result.samples)))
    default_block(result)
    boot = bootstrap(result)
    st.caption(summary(result, boot))
    st.subheader("Block to prune")
    inputs, panel = st.columns([1, 3], vertical_alignment="bottom")
    with inputs:
        start, n = block_inputs()
    with panel, user_errors():
        show_block(loaded, result, boot, run_id, start, n)
    st.caption(LEGEND)
    left, right = st.columns(2)
    y_axis = "fraction" if left.toggle("Y axis as fraction n / L", key="sim_fraction") else "n"
    scaled = right.toggle("Paper style: rescale each row to [0, 1]", key="sim_scaled",
                          help="Colours each n's row from its own minimum to its maximum, as the paper's heatmaps do; "
                          "the hover still shows the distance.")
    marked = marked_sets(loaded, settings)
    with st.container(horizontal=True, gap="medium"):
        fig = heatmap_figure(result, (start, n), y_axis, scaled, boot, marked)
        st.plotly_chart(fig, width="content", theme=None, key=CHART_KEY, on_select=on_chart_select,
                        selection_mode="points", config={"displaylogo": False})
        st.plotly_chart(min_distance_figure(result, boot), width=480, key="similarity_min")
    if boot:
        st.plotly_chart(stability_figure(result, boot), key="similarity_stability")
    downloads(result, boot, fig)
    sublayer_panel(loaded, settings)


def main() -> None:
    st.title("🗺️ Similarity heatmap")
    st.markdown("Angular distance d(x<sup>l</sup>, x<sup>l+n</sup>) between the residual stream entering layer *l* "
                "and layer *l+n*: where it is small, the block [l, l+n) barely changes the representation.",
                unsafe_allow_html=True)
    stream = st.toggle("Stream layer by layer", key="sim_stream", help="For models larger than memory: one decoder "
                       "layer at a time from the safetensors checkpoint; the same distances, never the whole model.")
    loaded = current_model(model_picker(), stream)
    if loaded is None:
        return
    runs = page_runs(get_store(), "similarity", viewer(), fingerprint=loaded.fingerprint, status="done")
    if runs and (st.session_state.get(RESULT_KEY) or {}).get("fingerprint") != loaded.fingerprint:
        show_saved(loaded, runs[0])  # a fresh session shows this visitor's newest run, the form set to its settings
    source = data_source()
    settings = calibration_settings()
    load, cores = machine_load()
    st.caption(estimate_text(estimate_similarity(get_store(), loaded.name, int(settings["samples"]), int(settings["seq_len"])),
                             "heatmap", load, cores))
    if st.button("Run", type="primary", disabled=source is None, key="sim_run"):
        with user_errors():
            run_calibration(loaded, source, settings)
    if runs := page_runs(get_store(), "similarity", viewer(), fingerprint=loaded.fingerprint, status="done"):  # Run may add one
        saved_run_picker(loaded, runs)
    if shown := kept_result(st.session_state.get(RESULT_KEY), loaded.fingerprint):
        results(loaded, *shown)


show_page("Similarity heatmap", main)

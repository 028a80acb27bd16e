"""The Prune & heal page's comparison of the pruned (and repaired) model with the unpruned one: a
"preview" run in the store (explorer.views.preview), so a reload, a closed tab or another visitor
asking the same finds it; the page only keeps its run id."""

from __future__ import annotations

import streamlit as st

from explorer.core.errors import ExplorerError
from explorer.export.folder import changes
from explorer.lm.blocks import LayerSet, recorded_layers
from explorer.lm.models import LoadedModel
from explorer.state.store import Run
from explorer.surgery.heal import HealConfig
from explorer.views.preview import comparison_frame, preview_caption, preview_run, rebuilt_preview
from explorer.views.text import plain
from pages import get_store, visitor
from pages.panels.export import export_panel
from pages.panels.generations import generation_pane
from pages.panels.progress import steady_progress

PRUNED_KEY = "ph_pruned"  # {"fingerprint", "run_id", "saved"}


def prune_now(loaded: LoadedModel, layers: LayerSet, config: HealConfig, prompt: str, repair: str) -> None:
    """Prune (and repair) a copy step by step under a progress bar, store the comparison as this
    visitor's "preview" run and show it."""
    with steady_progress("Pruning…") as update:
        run_id, _, _ = preview_run(loaded, layers, config, prompt, repair, get_store(),
                                   lambda i, total, label: update(i / total, f"Step {i + 1} of {total}: {label}…"))
    get_store().add_visitor(run_id, visitor())
    st.session_state[PRUNED_KEY] = {"fingerprint": loaded.fingerprint, "run_id": run_id, "saved": None}


def show_pruned(loaded: LoadedModel, model: dict, pruned: dict, heal_run_id: int | None) -> None:
    """The comparison of the preview run the session shows, its completions and the export box
    (pages.panels.export: the mergekit YAML, labelled when the model was repaired, Save, GGUF, push)."""
    try:
        run: Run = get_store().get_run(pruned["run_id"])
    except ExplorerError as exc:  # deleted from the Runs page meanwhile
        st.warning(f"{plain(exc)} Press Prune to compute it again.")
        st.session_state.pop(PRUNED_KEY, None)
        return
    result = run.result or {}
    if run.status != "done" or not result.get("rows"):
        st.info(f"Prune comparison run #{run.id} is {run.status}{f': {plain(run.error)}' if run.error else ''}.")
        return
    st.success(f"Removed {result['describe']} (prune comparison run #{run.id}).")
    st.dataframe(comparison_frame(result["rows"]), hide_index=True)  # loss, accuracy (with n), agreement side by side
    st.caption(preview_caption(result))
    generation_pane(loaded, run, heal_run_id)  # completions side by side, the repair's verdict on the evaluation text
    block = recorded_layers(result["block"])
    export_panel(model["source"], block, pruned,
                 lambda gguf: rebuilt_preview(loaded, run).save(model["source"], st.session_state.get("ph_dtype"), gguf),
                 changes({"repair": result.get("repair")}))

"""Prune & heal: remove the picked block (from the heatmap, a strategy or by hand), compare it with the unpruned
model, measure what it buys in speed and memory (pages.panels.speed), repair it (a linear map, explorer.views.preview)
or heal it with (Q)LoRA in a background job (explorer.jobs) whose live view reads only the store, so a reload, another
tab or a restarted server shows it. A fresh session opens on this visitor's newest comparison and heal of the model
(explorer.views.session), never on another visitor's."""

from __future__ import annotations

import time

import streamlit as st

from explorer import jobs
from explorer.core.errors import ExplorerError
from explorer.lm.models import LoadedModel
from explorer.lm.save import DTYPES
from explorer.state.store import Run
from explorer.surgery.heal import check_heal_size
from explorer.surgery.parallel import visible_gpus
from explorer.surgery.repair import RepairConfig
from explorer.views.figures.heal import heal_figure
from explorer.views.preview import PAGE_REPAIRS, REPAIR_HELP, comparison_frame, heal_rows, heal_widget_values
from explorer.views.progress import estimate_heal, estimate_text, heal_progress, machine_load, progress_text
from explorer.views.runs import heal_description
from explorer.views.session import first_run
from explorer.views.text import plain
from pages import check_text, get_store, job_status, job_view, show_page, user_errors, viewer, visitor
from pages.panels.heal_form import heal_settings
from pages.panels.layer_picker import MANUAL, layer_picker
from pages.panels.model import open_page
from pages.panels.pruned import PRUNED_KEY, prune_now, show_pruned
from pages.panels.speed import speed_panel

RUN_KEY = "ph_run"
LORA = PAGE_REPAIRS[2]  # "LoRA heal": a background job, started with Start healing


def run_summary(run: Run, events: list[dict]) -> None:
    """Which run and settings are shown, its progress with ETA (or what a queued job waits for),
    cancel, and the outcome of a finished run."""
    heal = run.settings["heal"]
    state = heal_progress(events, heal["steps"], heal["eval_every"], time.time())
    status = f"Heal run #{run.id} · {run.status} · step {state['step']} / {heal['steps']}"
    st.caption(plain(f"Showing heal run #{run.id}: {heal_description(run.settings)}."))
    job_status(run, state["fraction"], status, progress_text([state["phase"]], state["eta_s"]), "ph_cancel", "")
    if run.status == "done":
        if rows := heal_rows(run.result or {}):
            st.dataframe(comparison_frame(rows), hide_index=True)
        st.info(f"Healed, merged model saved to {plain(run.result['folder'])}." if (run.result or {}).get("folder") else
                "The healed model was not saved (tick “Save healed model” before starting to keep it).")


def heal_view(run: Run) -> None:
    run_summary(run, events := get_store().events(run.id))
    st.plotly_chart(heal_figure(events, run.settings["heal"]["steps"]), key="ph_live_plot", theme=None)


def reattach(loaded: LoadedModel) -> None:
    """A fresh session shows this visitor's newest heal job and comparison of this model, the form
    set to the heal's settings."""
    store, who = get_store(), viewer()
    if RUN_KEY not in st.session_state and (latest := first_run(store, "heal", who, model=loaded.name)):
        st.session_state[RUN_KEY] = latest.id
        st.session_state.update({**heal_widget_values(latest.settings), "ph_strategy": MANUAL})
    if PRUNED_KEY not in st.session_state and (shown := first_run(store, "preview", who, fingerprint=loaded.fingerprint)):
        st.session_state[PRUNED_KEY] = {"fingerprint": loaded.fingerprint, "run_id": shown.id, "saved": None}


def main() -> None:
    opened = open_page("🩹 Prune & heal", "Remove a block of layers, see what it costs, then heal the pruned model with "
                       "(Q)LoRA (Gromov et al., Sec. 4) and watch the loss and accuracy recover.")
    if opened is None:
        return
    model, loaded = opened
    reattach(loaded)
    st.subheader("Layers to remove")
    layers, allow_final = layer_picker(loaded, model)
    config = heal_settings(loaded)
    visible = visible_gpus()  # several GPUs: the job can train data-parallel on them (accelerate)
    gpus = st.slider(f"GPUs for healing ({visible} visible)", 1, visible, visible, key="ph_gpus") if visible > 1 else 1
    prompt = st.text_input("Prompt for the completion sample", "The capital of France is", key="ph_prompt")
    with st.container(horizontal=True, vertical_alignment="bottom"):
        repair = st.radio("Repair", PAGE_REPAIRS, horizontal=True, key="ph_repair", help=REPAIR_HELP)
        prune_clicked = st.button("Prune", type="primary", key="ph_prune", disabled=repair == LORA,
                                  help="LoRA healing trains in the background: press Start healing." if repair == LORA else None)
        heal_clicked = st.button("Start healing", key="ph_heal", help="A background job: it survives reloads and can be "
                                 "cancelled; with Repair linear, the map is fitted before healing (heal --repair linear).")
        save = st.checkbox("Save healed model", value=st.session_state.setdefault("ph_save_model", False), key="ph_save_model",
                           help="Writes the merged model to runs/<id>/ in EXPLORER_HOME (hundreds of MB for the embedded model).")
        dtype = st.selectbox("Saved weights", list(DTYPES), index=list(DTYPES).index(st.session_state.setdefault("ph_dtype", "bf16")),
                             key="ph_dtype", help="bf16 and fp16 take half the disk of fp32.", width=140)
    load, cores = machine_load()
    st.caption("Healing with these settings: " + estimate_text(estimate_heal(get_store(), loaded.name, config.to_json()), "heal",
                                                                  load, cores))
    with user_errors():
        config.check()
        check_text(config.source)
        if (prune_clicked or heal_clicked) and layers is None:
            raise ExplorerError("Choose what to remove first (the strategy above could not choose).")
        if prune_clicked:
            prune_now(loaded, layers, config, prompt, repair)
        if heal_clicked and not layers.contiguous:  # fail here, not in the job
            raise ExplorerError("Healing takes one contiguous block of layers; prune this set (and save it) instead.")
        if heal_clicked:
            block = layers.as_block()  # healing starts from one contiguous block
            check_heal_size(block.n)
            linear = RepairConfig(source=config.source, seq_len=config.seq_len, batch_size=config.eval_batch_size) \
                if repair == "linear" else None
            settings = {"model": model, "start": block.start, "n": block.n, "allow_final": allow_final, "heal": config.to_json(),
                        "save": save, "dtype": dtype, "processes": gpus, "repair": linear.to_json() if linear else None}
            st.session_state[RUN_KEY] = jobs.submit(get_store(), "heal", loaded.name, settings, owner=visitor())
        pruned = st.session_state.get(PRUNED_KEY)
        if pruned and pruned["fingerprint"] == loaded.fingerprint:
            st.subheader("Pruned model")
            show_pruned(loaded, model, pruned, st.session_state.get(RUN_KEY))
    speed_panel(loaded, model, layers)
    st.subheader("Healing")
    if RUN_KEY not in st.session_state:
        st.caption("No healing run for this model yet.")
        return
    job_view(st.session_state[RUN_KEY], RUN_KEY, heal_view)


show_page("Prune & heal", main)

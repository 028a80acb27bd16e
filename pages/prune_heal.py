"""Prune & heal: remove the picked block (from the heatmap, a strategy or by hand), compare it with the unpruned
model, repair it (a linear map, explorer.views.preview) or heal it with (Q)LoRA in a background job (explorer.jobs) whose
live view reads only the store, so a reload, another tab or a restarted server shows it."""

from __future__ import annotations

import time

import streamlit as st

from explorer import jobs
from explorer.lm.data import C4, EMBEDDED
from explorer.export.mergekit import mergekit_yaml
from explorer.lm.save import DTYPES
from explorer.surgery.heal import TARGETS, HealConfig
from explorer.views.figures.heal import heal_figure
from explorer.lm.models import LoadedModel, pick_device
from explorer.surgery.parallel import visible_gpus
from explorer.views.preview import (HEAL_LABELS, HEAL_NUMBERS, PAGE_REPAIRS, REPAIR_HELP, TARGET_NAMES, Preview, comparison_frame,
                              heal_config, heal_defaults, heal_rows, heal_widget_values, make_preview, recipe_caption,
                              recipe_widget_values)
from explorer.views.progress import heal_progress, progress_text
from explorer.views.runs import heal_description
from explorer.core.errors import ExplorerError
from explorer.lm.blocks import LayerSet
from explorer.surgery.recipe import recipe_for
from explorer.state.store import Run
from explorer.evaluation.tasks import default_eval_task, task_names
from pages import current_model, get_store, job_status, job_view, model_picker, show_page, user_errors
from pages.panels.layer_picker import MANUAL, layer_picker

PRUNED_KEY = "ph_pruned"  # {"fingerprint", "preview": explorer.views.preview.Preview, "saved"}
RUN_KEY = "ph_run"
RECIPE_KEY = "ph_recipe"  # the paper recipe last applied (explorer.surgery.recipe.PaperRecipe.to_json())


def apply_paper_recipe(loaded: LoadedModel) -> None:
    """Fill the form with the paper's recipe for this model (its table row, FFN targets)."""
    recipe = recipe_for(loaded.model, loaded.name)
    st.session_state.update(recipe_widget_values(recipe))
    st.session_state[RECIPE_KEY] = recipe.to_json()


def heal_settings(loaded: LoadedModel) -> HealConfig:
    """The healing and evaluation settings; the quick evaluation after pruning uses the same ones.
    Values live in session state (the recipe button and a followed run write them) and are each
    widget's default too (see pages/sweep.settings_form)."""
    d = {key: st.session_state.setdefault(key, value) for key, value in heal_defaults(pick_device(), default_eval_task()).items()}
    values = {}
    with st.expander("Healing and evaluation settings", expanded=False):
        st.button("📄 Paper recipe", key="ph_paper", on_click=apply_paper_recipe, args=(loaded,),
                  help="QLoRA on the FFN modules, alpha = rank, dropout 0.05, 5000 steps of batch 16 on C4, 100 warm-up "
                  "steps then cosine; learning rate and rank from the paper's table (Gromov et al., App. A).")
        st.caption(recipe_caption(st.session_state.get(RECIPE_KEY)))
        for column, (key, label, options) in zip(st.columns(4) * 3, HEAL_NUMBERS):
            values[key] = column.number_input(label, value=d[key], key=key, **options)
        c = st.columns(4)
        values["ph_qlora"] = c[0].checkbox(**HEAL_LABELS["ph_qlora"], value=d["ph_qlora"], key="ph_qlora")
        values["ph_task"] = c[1].selectbox(**HEAL_LABELS["ph_task"], options=task_names(), index=task_names().index(d["ph_task"]),
                                           key="ph_task")
        values["ph_source"] = c[2].selectbox(**HEAL_LABELS["ph_source"], options=[EMBEDDED, C4],
                                             index=[EMBEDDED, C4].index(d["ph_source"]), key="ph_source")
        values["ph_targets"] = st.radio(**HEAL_LABELS["ph_targets"], options=TARGETS, index=TARGETS.index(d["ph_targets"]),
                                        key="ph_targets", horizontal=True, format_func=TARGET_NAMES.get)
    return heal_config(values, st.session_state.get(RECIPE_KEY))


def prune_now(loaded: LoadedModel, layers: LayerSet, config: HealConfig, prompt: str, repair: str) -> None:
    """Prune (and repair) a copy step by step under a progress bar, and keep it, with every model's
    numbers, in the session."""
    bar = st.progress(0.0)
    try:
        preview = make_preview(loaded, layers, config, prompt, repair, get_store(),
                               lambda i, total, label: bar.progress(i / total, text=f"Step {i + 1} of {total}: {label}…"))
    finally:
        bar.empty()
    st.session_state[PRUNED_KEY] = {"fingerprint": loaded.fingerprint, "preview": preview, "saved": None}


def show_pruned(model: dict, pruned: dict) -> None:
    preview: Preview = pruned["preview"]
    result, rows, block = preview.result, preview.rows, preview.result.block
    st.success(f"Removed {block.describe(result.removed_params)}.")
    after = list(rows.values())[-1]
    st.dataframe(comparison_frame(rows), hide_index=True)  # loss, accuracy and agreement of every model side by side
    st.caption(f"Accuracy with its 95% Wilson interval; chance {after['chance']:.0%}; the completion is greedy."
               + (f" Linear repair folded into layer {preview.fit.layer}: held-out relative residual "
                  f"{preview.fit.heldout_residual:.2f} (unrepaired {preview.fit.heldout_residual_unrepaired:.2f})." if preview.fit else ""))
    for column, (name, row) in zip(st.columns(len(rows)), rows.items()):
        column.markdown(f"**{name.capitalize()} completes**")
        column.code(row["completion"], language=None, wrap_lines=True)
    with st.container(horizontal=True):
        st.download_button("mergekit YAML", mergekit_yaml(model["source"], block.num_layers, block),
                           f"prune-{block.key.replace(':', '-').replace(';', '_')}.yaml", "text/yaml", on_click="ignore", key="ph_yaml")
        if st.button("Save pruned model", key="ph_save"):
            pruned["saved"] = str(preview.save(model["source"], st.session_state.get("ph_dtype")))
    if pruned["saved"]:
        st.info(f"Saved to `{pruned['saved']}` (weights, tokenizer, run.json, mergekit.yaml).")


def run_summary(run: Run, events: list[dict]) -> None:
    """Which run and settings are shown, its progress with ETA (or what a queued job waits for),
    cancel, and the outcome of a finished run."""
    heal = run.settings["heal"]
    state = heal_progress(events, heal["steps"], heal["eval_every"], time.time())
    status = f"Heal run #{run.id} · {run.status} · step {state['step']} / {heal['steps']}"
    st.caption(f"Showing heal run #{run.id}: {heal_description(run.settings)}.")
    job_status(run, state["fraction"], status, progress_text([state["phase"]], state["eta_s"]), "ph_cancel", "")
    if run.status == "done":
        if rows := heal_rows(run.result or {}):
            st.dataframe(comparison_frame(rows), hide_index=True)
        st.info(f"Healed, merged model saved to `{run.result['folder']}`." if (run.result or {}).get("folder") else
                "The healed model was not saved (tick “Save healed model” before starting to keep it).")


def heal_view(run: Run) -> None:
    run_summary(run, events := get_store().events(run.id))
    st.plotly_chart(heal_figure(events, run.settings["heal"]["steps"]), key="ph_live_plot", theme=None)


def main() -> None:
    st.title("🩹 Prune & heal")
    st.markdown("Remove a block of layers, see what it costs, then heal the pruned model with (Q)LoRA "
                "(Gromov et al., Sec. 4) and watch the loss and accuracy recover.")
    model = model_picker()
    loaded = current_model(model)
    if loaded is None:
        return
    if RUN_KEY not in st.session_state and (latest := jobs.latest_job(get_store(), "heal", loaded.name)):
        st.session_state[RUN_KEY] = latest.id  # a reload shows the running (or newest) job, and the form its settings
        st.session_state.update({**heal_widget_values(latest.settings), "ph_strategy": MANUAL})
    st.subheader("Layers to remove")
    layers, allow_final = layer_picker(loaded, model)
    config = heal_settings(loaded)
    visible = visible_gpus()  # several GPUs: the job can train data-parallel on them (accelerate)
    gpus = st.slider(f"GPUs for healing ({visible} visible)", 1, visible, visible, key="ph_gpus") if visible > 1 else 1
    prompt = st.text_input("Prompt for the completion sample", "The capital of France is", key="ph_prompt")
    with st.container(horizontal=True, vertical_alignment="bottom"):
        repair = st.radio("Repair", PAGE_REPAIRS, horizontal=True, key="ph_repair", help=REPAIR_HELP)
        prune_clicked = st.button("Prune", type="primary", key="ph_prune")
        heal_clicked = st.button("Start healing", key="ph_heal", help="A background job: it survives reloads and can be cancelled.")
        save = st.checkbox("Save healed model", value=st.session_state.setdefault("ph_save_model", False), key="ph_save_model",
                           help="Writes the merged model to runs/<id>/ in EXPLORER_HOME (hundreds of MB for the embedded model).")
        dtype = st.selectbox("Saved weights", list(DTYPES), index=list(DTYPES).index(st.session_state.setdefault("ph_dtype", "bf16")),
                             key="ph_dtype", help="bf16 and fp16 take half the disk of fp32.", width=140)
    with user_errors():
        config.check()
        if (prune_clicked or heal_clicked) and layers is None:
            raise ExplorerError("Choose what to remove first (the strategy above could not choose).")
        if prune_clicked:
            prune_now(loaded, layers, config, prompt, repair)
        if heal_clicked and not layers.contiguous:  # fail here, not in the job
            raise ExplorerError("Healing takes one contiguous block of layers; prune this set (and save it) instead.")
        if heal_clicked:
            block = layers.as_block()
            settings = {"model": model, "start": block.start, "n": block.n, "allow_final": allow_final, "heal": config.to_json(),
                        "save": save, "dtype": dtype, "processes": gpus}
            st.session_state[RUN_KEY] = jobs.submit(get_store(), "heal", loaded.name, settings)
        pruned = st.session_state.get(PRUNED_KEY)
        if pruned and pruned["fingerprint"] == loaded.fingerprint:
            st.subheader("Pruned model")
            show_pruned(model, pruned)
    st.subheader("Healing")
    if RUN_KEY not in st.session_state:
        st.caption("No healing run for this model yet.")
        return
    job_view(st.session_state[RUN_KEY], RUN_KEY, heal_view)


show_page("Prune & heal", main)

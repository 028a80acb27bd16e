"""Prune & heal: remove the picked block, see what it cost, repair it (linear map or (Q)LoRA) and watch it live.

The block comes from the heatmap page (st.session_state["selected_block"]), a strategy, or the
number inputs. Pruning (and a linear repair) is an in-memory copy for a quick look beside the
unpruned model (explorer.preview) and export. Healing runs as a background job (explorer.jobs):
the live section reads only the store, so a reload, another tab or a restarted server shows it.
"""

from __future__ import annotations

import time

import streamlit as st

from explorer import jobs
from explorer.blocks import check_block
from explorer.data import C4, EMBEDDED
from explorer.export import mergekit_yaml
from explorer.heal import TARGETS, HealConfig, default_eval_task
from explorer.heal_figures import heal_figure
from explorer.models import LoadedModel, pick_device
from explorer.parallel import visible_gpus
from explorer.preview import PAGE_REPAIRS, Preview, comparison_frame, heal_rows, latest_similarity, make_preview
from explorer.progress import heal_progress, progress_text
from explorer.runs import heal_description
from explorer.prune import STRATEGIES, strategy_block
from explorer.recipe import recipe_for
from explorer.store import Run
from explorer.tasks import task_names
from pages import current_model, get_store, job_view, model_picker, show_page, user_errors

BLOCK_KEY = "selected_block"  # written by the heatmap page
PRUNED_KEY = "ph_pruned"  # {"fingerprint", "preview": explorer.preview.Preview, "saved"}
RUN_KEY = "ph_run"
START_KEY, SIZE_KEY = "ph_start", "ph_n"
MANUAL = "manual (numbers below)"
HEAL_WIDGETS = {"ph_steps": "steps", "ph_rank": "rank", "ph_alpha": "alpha", "ph_lr": "lr", "ph_batch": "batch_size",
                "ph_seq": "seq_len", "ph_every": "eval_every", "ph_qlora": "quantize", "ph_task": "eval_task",
                "ph_limit": "eval_limit", "ph_val": "val_samples", "ph_source": "source",
                "ph_targets": "targets"}  # widget key -> HealConfig field
DTYPES = ["bf16", "fp16", "fp32"]


def follow_run(run: Run) -> None:
    """Set the form to the settings of the heal run on screen (after a reload: the running or newest job)."""
    s = run.settings
    st.session_state.update({key: s["heal"][name] for key, name in HEAL_WIDGETS.items() if s["heal"].get(name) is not None})
    st.session_state.update({START_KEY: s["start"], SIZE_KEY: s["n"], "ph_allow_final": s.get("allow_final", False),
                             "ph_strategy": MANUAL, "ph_save_model": s.get("save", False), "ph_dtype": s.get("dtype") or "bf16"})
REPAIR_HELP = ("none: the block simply removed; linear: a map fitted on calibration text, folded into the layer before "
               "the block (no training); LoRA heal: train adapters (Start healing, a background job below).")


def block_picker(loaded: LoadedModel, model: dict) -> tuple[int, int, bool]:
    """Start and size of the block: the heatmap's pick when it was made on this model, or a strategy."""
    num_layers = loaded.num_layers
    picked = st.session_state.get(BLOCK_KEY)
    from_heatmap = picked if picked and picked["model"] == model and picked["num_layers"] == num_layers else None
    if from_heatmap and st.session_state.get("ph_from") != (from_heatmap["start"], from_heatmap["n"]):
        st.session_state["ph_from"] = (from_heatmap["start"], from_heatmap["n"])
        st.session_state[START_KEY], st.session_state[SIZE_KEY] = from_heatmap["start"], from_heatmap["n"]
    if st.session_state.get(SIZE_KEY, num_layers) >= num_layers or st.session_state.get(START_KEY, num_layers) >= num_layers:
        st.session_state[SIZE_KEY] = max(1, num_layers // 4)  # first visit, or a model with fewer layers
        st.session_state[START_KEY] = num_layers - 1 - st.session_state[SIZE_KEY]
    strategy = st.selectbox("Choose the block by", [MANUAL, *STRATEGIES], key="ph_strategy",
                            help="similarity: the paper's argmin of the angular distance (needs a heatmap run); "
                                 "simple: the deepest n layers before the last; top-cut: the last n layers.")
    left, middle, right = st.columns([1, 1, 2], vertical_alignment="bottom")
    n = int(middle.number_input("Block size n", min_value=0, max_value=num_layers - 1,
                                value=st.session_state[SIZE_KEY], step=1, key=SIZE_KEY))
    if strategy != MANUAL:
        with user_errors():
            similarity = latest_similarity(loaded, get_store()) if strategy == "similarity" else None
            block = strategy_block(strategy, n, num_layers, similarity)
            st.session_state[START_KEY] = block.start
    start = int(left.number_input("First layer l", min_value=0, max_value=num_layers - 1,
                                  value=st.session_state[START_KEY], step=1, key=START_KEY, disabled=strategy != MANUAL))
    allow_final = right.checkbox("Allow removing the final layer", key="ph_allow_final",
                                 help="The paper shows the final layer must be kept; top-cut removes it by design.")
    if from_heatmap and (start, n) == (from_heatmap["start"], from_heatmap["n"]):
        st.caption(f"Block picked on the heatmap (similarity run #{from_heatmap['similarity_run']}).")
    return start, n, allow_final or strategy == "top-cut"


RECIPE_KEY = "ph_recipe"  # the paper recipe last applied (explorer.recipe.PaperRecipe.to_json())


def apply_paper_recipe(loaded: LoadedModel) -> None:
    """Fill the widgets with the paper's recipe for this model (its table row, FFN targets)."""
    config = recipe_for(loaded.model, loaded.name)
    st.session_state.update({key: getattr(config.heal_config(), name) for key, name in HEAL_WIDGETS.items()})
    st.session_state[RECIPE_KEY] = config.to_json()


def heal_settings(loaded: LoadedModel) -> HealConfig:
    """The healing and evaluation settings; the quick evaluation after pruning uses the same ones.
    Values live in session state (the recipe button and a followed run write them) and are each
    widget's default too (see pages/sweep.settings_form)."""
    defaults = {**HealConfig().to_json(), "quantize": pick_device() == "cuda", "eval_task": default_eval_task()}
    d = {key: st.session_state.setdefault(key, defaults[name]) for key, name in HEAL_WIDGETS.items()}
    recipe = st.session_state.get(RECIPE_KEY)
    with st.expander("Healing and evaluation settings", expanded=False):
        st.button("📄 Paper recipe", key="ph_paper", on_click=apply_paper_recipe, args=(loaded,),
                  help="QLoRA on the FFN modules, alpha = rank, dropout 0.05, 5000 steps of batch 16 on C4, 100 warm-up "
                  "steps then cosine; learning rate and rank from the paper's table (Gromov et al., App. A).")
        st.caption(f"Paper recipe: {recipe['row_reason']}; LoRA on {', '.join(recipe['targets'])}; warm-up "
                   f"{recipe['warmup_steps']} steps, dropout {recipe['dropout']}. The paper evaluates {recipe['evaluation']}."
                   if recipe else "Defaults are a few-minute CPU demo; the button fills in the paper's recipe for this model.")
        c = st.columns(4)
        steps = c[0].number_input("Steps", min_value=1, value=d["ph_steps"], key="ph_steps")
        rank = c[1].number_input("LoRA rank", min_value=1, value=d["ph_rank"], key="ph_rank")
        alpha = c[2].number_input("LoRA alpha", min_value=1, value=d["ph_alpha"], key="ph_alpha")
        lr = c[3].number_input("Learning rate", min_value=1e-7, value=d["ph_lr"], format="%.0e", key="ph_lr")
        c = st.columns(4)
        batch = c[0].number_input("Batch size", min_value=1, value=d["ph_batch"], key="ph_batch")
        seq_len = c[1].number_input("Tokens per sample", min_value=8, value=d["ph_seq"], step=32, key="ph_seq")
        every = c[2].number_input("Evaluate every (steps)", min_value=1, value=d["ph_every"], key="ph_every")
        quantize = c[3].checkbox("QLoRA (nf4 base)", value=d["ph_qlora"], key="ph_qlora",
                                 help="4-bit NormalFloat base weights with bf16 compute (bitsandbytes), as in the paper.")
        c = st.columns(4)
        tasks = task_names()
        task = c[0].selectbox("Accuracy task", tasks, index=tasks.index(d["ph_task"]), key="ph_task")
        limit = c[1].number_input("Questions per evaluation", min_value=1, value=d["ph_limit"], key="ph_limit")
        val_samples = c[2].number_input("Held-out samples (loss)", min_value=1, value=d["ph_val"], key="ph_val")
        source = c[3].selectbox("Healing text", [EMBEDDED, C4], index=[EMBEDDED, C4].index(d["ph_source"]), key="ph_source",
                                help="Training split of the source; the loss uses its held-out documents.")
        targets = st.radio("LoRA on", TARGETS, index=TARGETS.index(d["ph_targets"]), key="ph_targets", horizontal=True,
                           format_func=lambda t: "feed-forward modules only (the paper)" if t == "ffn" else "all linear projections")
    extra = {"warmup_steps": recipe["warmup_steps"], "dropout": recipe["dropout"]} if recipe else {}
    return HealConfig(rank=int(rank), alpha=int(alpha), lr=float(lr), steps=int(steps), batch_size=int(batch),
                      seq_len=int(seq_len), eval_every=int(every), quantize=quantize, eval_task=task,
                      eval_limit=int(limit), val_samples=int(val_samples), source=source, targets=targets, **extra)


def prune_now(loaded: LoadedModel, start: int, n: int, allow_final: bool, config: HealConfig, prompt: str, repair: str) -> None:
    """Prune (and repair) a copy step by step under a progress bar, and keep it, with every model's
    numbers, in the session."""
    bar = st.progress(0.0)
    try:
        preview = make_preview(loaded, start, n, allow_final, config, prompt, repair, get_store(),
                               lambda i, total, label: bar.progress(i / total, text=f"Step {i + 1} of {total}: {label}…"))
    finally:
        bar.empty()
    st.session_state[PRUNED_KEY] = {"fingerprint": loaded.fingerprint, "preview": preview, "saved": None}


def show_pruned(model: dict, pruned: dict) -> None:
    preview: Preview = pruned["preview"]
    result, rows, block = preview.result, preview.rows, preview.result.block
    st.success(f"Removed {block.describe(result.removed_params)}.")
    before, after = rows["unpruned"], list(rows.values())[-1]
    c = st.columns(3)
    c[0].metric("Parameters", f"{result.params_after / 1e6:.1f}M", f"{-result.removed_params / 1e6:.1f}M", delta_color="off")
    c[1].metric("Held-out loss", f"{after['val_loss']:.3f}", f"{after['val_loss'] - before['val_loss']:+.3f}", delta_color="inverse")
    c[2].metric(f"Accuracy ({after['task']})", f"{after['accuracy']:.0%}", f"{after['accuracy'] - before['accuracy']:+.0%}")
    st.dataframe(comparison_frame(rows), hide_index=True)
    st.caption(f"Accuracy with its 95% Wilson interval; chance {after['chance']:.0%}; the completion is greedy."
               + (f" Linear repair folded into layer {preview.fit.layer}: held-out relative residual "
                  f"{preview.fit.heldout_residual:.2f} (unrepaired {preview.fit.heldout_residual_unrepaired:.2f})." if preview.fit else ""))
    for column, (name, row) in zip(st.columns(len(rows)), rows.items()):
        column.markdown(f"**{name.capitalize()} completes**")
        column.code(row["completion"], language=None, wrap_lines=True)
    with st.container(horizontal=True):
        st.download_button("mergekit YAML", mergekit_yaml(model["source"], block.num_layers, block),
                           f"prune-{block.start}-{block.n}.yaml", "text/yaml", on_click="ignore", key="ph_yaml")
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
    if run.status == "queued":
        st.progress(0.0, text=f"{status} · {jobs.queue_reason(get_store(), run.id)}")
    elif run.status in jobs.ACTIVE:
        st.progress(state["fraction"], text=progress_text([status, state["phase"]], state["eta_s"]))
    if run.status in jobs.ACTIVE:
        if st.button("Cancel", key="ph_cancel"):
            jobs.cancel(get_store(), run.id)
    elif run.status == "failed":
        st.error(f"{status}: {run.error}", icon="🚫")
    elif run.status == "cancelled":
        st.info(f"{status}: cancelled.")
    else:
        st.success(status)
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
        follow_run(latest)
    st.subheader("Block")
    start, n, allow_final = block_picker(loaded, model)
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
        dtype = st.selectbox("Saved weights", DTYPES, index=DTYPES.index(st.session_state.setdefault("ph_dtype", "bf16")),
                             key="ph_dtype", help="bf16 and fp16 take half the disk of fp32.", width=140)
    with user_errors():
        config.check()
        if prune_clicked:
            prune_now(loaded, start, n, allow_final, config, prompt, repair)
        if heal_clicked:
            check_block(start, n, loaded.num_layers, allow_final)  # fail here, not in the job
            settings = {"model": model, "start": start, "n": n, "allow_final": allow_final, "heal": config.to_json(),
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

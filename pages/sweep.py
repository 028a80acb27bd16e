"""Phase-transition sweep: accuracy and loss against the fraction of layers dropped, for every
strategy, live while the background job measures each point; the words beside the plot describe
the curve drawn (explorer.views.figures.sweep.curve_story), not the paper's."""

from __future__ import annotations

import time

import streamlit as st

from explorer import jobs
from explorer.analysis.strategies import STRATEGIES, strategies_help
from explorer.evaluation.tasks import task_names
from explorer.experiments.sweep import SweepSettings, parse_fractions, teaching_preset
from explorer.experiments.sweep.distributed import ray_available
from explorer.state.store import Run
from explorer.surgery.distill import OBJECTIVES
from explorer.surgery.repair import REPAIRS
from explorer.views.figures.sweep import accuracy_figure, curve_story, loss_figure, points_frame
from explorer.views.forms.sweep import LABELS, MODES, widget_values
from explorer.views.progress import progress_text, sweep_progress
from explorer.views.runs import sweep_description, sweep_label
from explorer.views.session import page_runs
from explorer.views.text import plain
from pages import check_text, download_row, get_store, job_view, points_status, show_page, user_errors, viewer, visitor
from pages.panels.model import open_page
from pages.panels.sweep_generation import generation_inputs, generation_plots
from pages.panels.sweep_notes import estimate, heatmap_notice
from pages.panels.sweep_speed import speed_plot

RUN_KEY = "sweep_run"
DEFAULTS = SweepSettings()

ACCURACY_TEXT = """
**What to look for.** Each point removes *n* layers with one strategy and asks the quiz again.
In the paper (7B–70B models) accuracy holds near the unpruned model's, then falls to the dotted
**random-guess** line over a narrow range of *n*: a *phase transition* (for Llama-2-70B on MMLU
near half the layers). A small model has less to spare and may fall at once: the words under the
plot say what this curve does. The shaded band is the 95% Wilson interval: with a few dozen
questions per point, differences inside it are noise. The ring marks the first point whose
interval reaches chance.
"""
LOSS_TEXT = """
**Loss moves differently.** The held-out loss is normalized so 0 is the unpruned model and 1 is
uniform guessing over the vocabulary. With the similarity strategy it rises gradually from the
first removed layer, with no sharp transition: the paper's contrast between gradual loss
degradation and abrupt collapse of knowledge QA. Above 1 the pruned model is worse than guessing
uniformly: it is confidently wrong. Compare the strategies: *similarity* removes the block whose input and output
agree most; *simple* removes the deepest layers but keeps the last; *top-cut* also drops the last
layer; *block-influence* and the *iterative* strategies remove any set of layers, not one block; *attention-drop*
and *mlp-drop* drop sub-layers only (their x counts sub-layers of that kind). Error bars: the loss's standard
error over the held-out documents.
"""
HEALED_TEXT = "Dashed lines are the same points after a short LoRA healing run."


def apply_preset() -> None:
    """Fill the widgets with the teaching preset (a few minutes on the embedded model on CPU)."""
    st.session_state.update(widget_values(teaching_preset()))


def settings_form(model: dict) -> SweepSettings:
    """The form's values live in session state (the preset button writes them there). Each widget
    also gets its value as its default: the browser mounts a widget it has not drawn yet from its
    default, so a click while the page is still loading would otherwise reset the form to each
    widget's first option or minimum (and send that back as the user's choice)."""
    state = {key: st.session_state.setdefault(key, value) for key, value in widget_values(DEFAULTS).items()}
    with st.container(border=True):
        preset = teaching_preset()
        st.button("🎓 Teaching preset", on_click=apply_preset, key="sw_preset",
                  help=f"Embedded model on CPU in a few minutes: n = 0, {preset.stride}, {2 * preset.stride}, …, "
                       f"{' and '.join(preset.strategies)}, {preset.limit} quiz questions per point.")
        strategies = st.multiselect(**{**LABELS["sw_strategies"], "help": strategies_help()}, options=list(STRATEGIES),
                                    default=state["sw_strategies"], key="sw_strategies")
        left, right = st.columns(2)
        mode = left.radio("Block sizes", MODES, index=MODES.index(state["sw_mode"]), key="sw_mode", horizontal=True)
        if mode == MODES[0]:
            stride = int(right.number_input(**LABELS["sw_stride"], min_value=1, max_value=64, value=state["sw_stride"], key="sw_stride"))
            fractions = None
        else:
            stride = 1
            fractions = parse_fractions(right.text_input(**LABELS["sw_fractions"], value=state["sw_fractions"], key="sw_fractions"))
        a, b, c, r = st.columns(4)
        tasks = task_names()
        task = a.selectbox(**LABELS["sw_task"], options=tasks, index=tasks.index(state["sw_task"]), key="sw_task")
        limit = int(b.number_input(**LABELS["sw_limit"], min_value=1, max_value=100_000, value=state["sw_limit"], key="sw_limit"))
        heal_steps = int(c.number_input(**LABELS["sw_heal"], min_value=0, max_value=10_000, value=state["sw_heal"], key="sw_heal"))
        repair = r.radio(**LABELS["sw_repair"], options=REPAIRS, index=REPAIRS.index(state["sw_repair"]), key="sw_repair",
                         horizontal=True)
        speed = st.checkbox(**LABELS["sw_speed"], value=state["sw_speed"], key="sw_speed")
        heal_objective = st.radio(**LABELS["sw_heal_objective"], options=OBJECTIVES, key="sw_heal_objective", horizontal=True,
                                  index=OBJECTIVES.index(state["sw_heal_objective"]))
        with st.expander("Text and samples"):
            text = st.text_input(**LABELS["sw_text"], value=state["sw_text"], key="sw_text")
            d, e, f, g = st.columns(4)
            val = int(d.number_input(**LABELS["sw_val"], min_value=1, max_value=4096, value=state["sw_val"], key="sw_val"))
            sim = int(e.number_input(**LABELS["sw_sim"], min_value=1, max_value=4096, value=state["sw_sim"], key="sw_sim"))
            seq = int(f.number_input(**LABELS["sw_seq"], min_value=2, max_value=8192, value=state["sw_seq"], key="sw_seq"))
            batch = int(g.number_input(**LABELS["sw_batch"], min_value=1, max_value=512, value=state["sw_batch"], key="sw_batch"))
    return SweepSettings(
        model=model["source"], device=model["device"], load_in_4bit=model["load_in_4bit"],
        trust_remote_code=model["trust_remote_code"], strategies=tuple(strategies), fractions=fractions, stride=stride,
        task=task, limit=limit, heal_steps=heal_steps, repair=repair, text=text, val_samples=val, sim_samples=sim, seq_len=seq,
        batch_size=batch, speed=speed, heal_objective=heal_objective,
        **generation_inputs(state),
    )


def plots(run: Run, points: list[dict], x_max: float | None) -> None:
    acc, loss = accuracy_figure(points, x_max), loss_figure(points, x_max)
    left, right = st.columns([3, 1])
    left.plotly_chart(acc, key="sw_acc")
    right.markdown(ACCURACY_TEXT)
    st.caption("**This curve.** " + curve_story(points))
    left, right = st.columns([3, 1])
    left.plotly_chart(loss, key="sw_loss")
    right.markdown(LOSS_TEXT + (HEALED_TEXT if any(p["healed"] for p in points) else ""))
    generation_plots(points, x_max)  # the generative curve, repetition and the repairs' verdicts (issue 21)
    stem = f"sweep-{run.id}"
    speed_plot(points, stem)
    download_row([
        ("Points (CSV)", points_frame(points).to_csv(index=False), f"{stem}.csv", "text/csv", "sw_csv"),
        ("Accuracy plot (HTML)", lambda: acc.to_html(include_plotlyjs=True), f"{stem}-accuracy.html", "text/html", "sw_acc_html"),
        ("Loss plot (HTML)", lambda: loss.to_html(include_plotlyjs=True), f"{stem}-loss.html", "text/html", "sw_loss_html"),
    ])


def sweep_view(run: Run) -> None:
    """Which sweep and settings are shown, points done / total with an ETA (or what a queued job
    waits for), and the plots."""
    store = get_store()
    events = store.events(run.id)
    points = [e for e in events if e.get("kind") == "point"]
    state = sweep_progress(events, time.time())
    st.caption(plain(f"Showing sweep run #{run.id}: {sweep_description(SweepSettings.from_json(run.settings))}."))
    points_status(run, len(points), state["total"], progress_text([state["phase"]], state["eta_s"]), "sw_cancel",
                  "Start the sweep again with the same settings to resume from these points.")
    plan = next((e for e in reversed(events) if e.get("kind") == "plan"), None)
    if points:  # the x axis spans the whole plan from the first point on
        plots(run, points, max(plan["sizes"]) / plan["num_layers"] if plan and plan.get("sizes") else None)


def show_sweep(run: Run) -> None:
    """Show a saved sweep and set the form to its settings (a callback: it runs before the widgets)."""
    st.session_state[RUN_KEY] = run.id
    st.session_state.update(widget_values(SweepSettings.from_json(run.settings)))


def run_picker(runs: list[Run]) -> int | None:
    """The session's sweep (main sets the newest saved sweep of this model on a fresh session)."""
    if runs:
        with st.expander(f"Saved sweeps of this model ({len(runs)})"):
            by_id = {r.id: r for r in runs}
            chosen = st.selectbox("Sweep", list(by_id), key="sw_saved", format_func=lambda i: sweep_label(by_id[i]))
            st.button("Show this sweep", key="sw_show", on_click=show_sweep, args=(by_id[chosen],))
    return st.session_state.get(RUN_KEY)


def main() -> None:
    opened = open_page("📉 Phase-transition sweep", "Drop more and more layers with each strategy and see where accuracy "
                       "collapses to chance, and how the loss rises (Gromov et al., Figures 1–2).")
    if opened is None:
        return
    model, loaded = opened
    runs = page_runs(get_store(), "sweep", viewer(), model=loaded.name)
    if RUN_KEY not in st.session_state and runs:  # a reload shows this visitor's newest sweep, and the form its settings
        show_sweep(runs[0])
    with user_errors():
        settings = settings_form(model)
        settings.check()
        check_text(settings.text)
        heatmap_notice(loaded, settings)
        estimate(loaded, settings)
        ray = ray_available() and st.toggle("Measure points in parallel on Ray", key="sw_ray",
                                            help="A local Ray instance: one worker per CPU core (per GPU when present), one model load each.")
        if st.button("Start sweep", type="primary", key="sw_start",
                     help="Runs as a background job; a sweep with the same settings resumes from finished points."):
            executor = {"executor": "ray"} if ray else {}
            st.session_state[RUN_KEY] = jobs.submit(get_store(), "sweep", loaded.name, {**settings.to_json(), **executor},
                                                    owner=visitor())
    run_id = run_picker(runs)
    if run_id is not None:
        job_view(run_id, RUN_KEY, sweep_view, "Start a new sweep or pick another run.")


show_page("Phase-transition sweep", main)

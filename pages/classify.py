"""Classification after cutting layers ("Why Lift so Heavy?"): held-out accuracy against layers kept,
in-context, prompt-finetuned and head-finetuned, live while the background job measures each point."""

from __future__ import annotations

import streamlit as st

from explorer import jobs
from explorer.core.options import widget
from explorer.experiments.classify import CLASSIFY_STRATEGIES, CLASSIFY_TASKS, ClassifySettings, classify_points, parse_ints
from explorer.state.store import Run
from explorer.surgery.finetune import MODES, WEIGHTS, FinetuneConfig
from explorer.views.figures.classify import accuracy_vs_k_figure, classify_frame
from explorer.views.progress import current_phase, estimate_classify, estimate_text, machine_load
from explorer.views.session import first_run
from explorer.views.text import plain
from pages import check_text, get_store, job_view, points_status, show_page, user_errors, viewer, visitor
from pages.panels.model import check_model, model_picker

RUN_KEY = "classify_run"
DEFAULTS, TUNING = ClassifySettings(), FinetuneConfig()

EXPLAIN = """
**What to look for.** Yuan et al. cut GPT-2 XL and OPT down to their first *k* layers and find that,
**after finetuning**, SST-2 / AG News accuracy holds even at k = 1. Grey: the cut model answers from
the prompt alone (in-context); blue: the same prompt and label words, finetuned (LoRA or all weights);
red: a linear classification head on the last kept layer's final-token state. Error bars are 95%
Wilson intervals on the held-out examples (never used for training or as demonstrations); the dotted
line is chance. Solid: top-cut; dashed: the similarity strategy's block.
"""


def settings_form(model: dict) -> ClassifySettings:
    """The form, labelled from the settings' own help (explorer.core.options, as the CLI); each widget
    keeps its value in session state (see pages/sweep.py for why)."""
    with st.container(border=True):
        a, b, c = st.columns(3)
        task = a.selectbox(options=CLASSIFY_TASKS, key="cl_task", **widget(ClassifySettings, "task"))
        data = b.text_input(value=DEFAULTS.data_file, key="cl_data", **widget(ClassifySettings, "data_file"))
        train = int(c.number_input(min_value=0, max_value=100_000, value=DEFAULTS.train, key="cl_train",
                                   **widget(ClassifySettings, "train")))
        strategies = st.multiselect(options=CLASSIFY_STRATEGIES, default=list(DEFAULTS.strategies), key="cl_strategies",
                                    **widget(ClassifySettings, "strategies"))
        modes = st.multiselect(options=MODES, default=list(DEFAULTS.modes), key="cl_modes", **widget(ClassifySettings, "modes"))
        d, e, f, g = st.columns(4)
        keep = parse_ints(d.text_input(value=",".join(map(str, DEFAULTS.keep)), key="cl_keep", **widget(ClassifySettings, "keep")),
                          "Layers kept")
        steps = int(e.number_input(min_value=0, max_value=100_000, value=TUNING.steps, key="cl_steps",
                                   **widget(FinetuneConfig, "steps")))
        weights = f.selectbox(options=WEIGHTS, key="cl_weights", **widget(FinetuneConfig, "weights"))
        shots = int(g.number_input(min_value=0, max_value=32, value=DEFAULTS.shots, key="cl_shots",
                                   **widget(ClassifySettings, "shots")))
    return ClassifySettings(
        model=model["source"], device=model["device"], task=task, data_file=None if data.strip() == "hub" else data.strip(),
        train=train, strategies=tuple(strategies), modes=tuple(modes), keep=keep, shots=shots,
        finetune={"steps": steps, "weights": weights},
    )


def run_view(run: Run) -> None:
    store = get_store()
    points = classify_points(store, run.id)
    plan = next((e for e in store.events(run.id) if e.get("kind") == "plan"), None)
    points_status(run, len(points), plan["points"] if plan else None, current_phase(store.events(run.id)), "cl_cancel",
                  "Start it again to measure the remaining points.")
    st.caption(plain(f"Showing classification run #{run.id}: {run.settings.get('task')}, {', '.join(run.settings.get('modes', []))}."))
    if plan:
        st.caption(plain(f"{plan['source']} · train {plan['n_train']}, test {plan['n_test']} (every accuracy is on these "
                         f"{plan['n_test']} held-out examples) · {plan['num_layers']} layers"))
    if points:
        left, right = st.columns([3, 1])
        fig = accuracy_vs_k_figure(points)
        left.plotly_chart(fig, key="cl_fig")
        right.markdown(EXPLAIN)
        frame = classify_frame(points)
        st.dataframe(frame, hide_index=True)
        st.download_button("Points (CSV)", frame.to_csv(index=False), f"classify-{run.id}.csv", "text/csv",
                           key="cl_csv", on_click="ignore")


def main() -> None:
    st.title("🏋️ Classification after cutting layers")
    st.markdown("Keep the first *k* layers (or cut the most similar block), then classify in-context or after "
                "prompt-based finetuning (Yuan, Nie, Ma & Färber, *Why Lift so Heavy?*, arXiv 2402.11700).")
    model = model_picker()
    if not model["source"]:
        st.info("Enter a model id or path in the sidebar.")
        return
    with user_errors():
        check_model(model)  # the one model-source check, as every other page: no server path, no shadowing folder
        settings = settings_form(model)
        if settings.data_file not in (None, "embedded"):
            check_text(settings.data_file)  # a path on the server only when the operator allows paths
        task = settings.check()
        st.caption(plain(task.source))
        points = len(settings.keep) * len(settings.strategies)
        st.caption(f"{points * len(settings.modes)} points: " + estimate_text(
            estimate_classify(get_store(), settings.model, settings.modes, points), "classification run", *machine_load()))
        if st.button("Start", type="primary", key="cl_start", help="Runs as a background job; reloads keep it."):
            st.session_state[RUN_KEY] = jobs.submit(get_store(), "classify", settings.model, settings.to_json(), owner=visitor())
    if RUN_KEY not in st.session_state and (latest := first_run(get_store(), "classify", viewer(), model=model["source"])):
        st.session_state[RUN_KEY] = latest.id
    if (run_id := st.session_state.get(RUN_KEY)) is not None:
        job_view(run_id, RUN_KEY, run_view, "Start a new run.")


show_page("Classification after cutting layers", main)

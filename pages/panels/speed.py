"""The Prune page's speed panel: how much faster and smaller removing the picked block makes the model,
measured as a background "speed" run (explorer.experiments.speed: the unpruned model and the pruned one
timed interleaved in one process) and drawn from the store, so a reload shows it again."""

from __future__ import annotations

import streamlit as st

from explorer import jobs
from explorer.evaluation.speed import SpeedSettings, calibrate, estimate_seconds
from explorer.experiments.speed import drop_record, speed_settings
from explorer.lm.blocks import LayerSet
from explorer.lm.models import LoadedModel
from explorer.state.store import Run
from explorer.views.speed import (
    LABELS,
    form_settings,
    speed_description,
    speed_estimate_text,
    speed_frame,
    speed_lines,
    speed_progress,
    speed_runs,
    widget_values,
)
from pages import get_store, job_status, job_view, user_errors, viewer, visitor

RUN_KEY = "ph_speed_run"
CALIBRATION_KEY = "ph_speed_calibration"  # {fingerprint: (seconds per prompt token, seconds per decode step)}


def settings_form() -> SpeedSettings:
    state = {key: st.session_state.setdefault(key, value) for key, value in widget_values(SpeedSettings()).items()}
    a, b, c, d = st.columns(4)
    values = {"ph_speed_prompt": a.number_input(**LABELS["ph_speed_prompt"], min_value=1, max_value=8192, key="ph_speed_prompt",
                                                value=state["ph_speed_prompt"]),
              "ph_speed_steps": b.number_input(**LABELS["ph_speed_steps"], min_value=1, max_value=4096, key="ph_speed_steps",
                                               value=state["ph_speed_steps"]),
              "ph_speed_batches": c.text_input(**LABELS["ph_speed_batches"], key="ph_speed_batches", value=state["ph_speed_batches"]),
              "ph_speed_repeats": d.number_input(**LABELS["ph_speed_repeats"], min_value=1, max_value=50, key="ph_speed_repeats",
                                                 value=state["ph_speed_repeats"])}
    return form_settings(values)


def estimate(loaded: LoadedModel, settings: SpeedSettings) -> str:
    """The time the measurement will take, priced once per model and session by a short decode here."""
    prices = st.session_state.setdefault(CALIBRATION_KEY, {})
    if loaded.fingerprint not in prices:
        prices[loaded.fingerprint] = calibrate(loaded.model)
    return speed_estimate_text(estimate_seconds(*prices[loaded.fingerprint], settings, 2), settings, 2)


def speed_view(run: Run) -> None:
    fraction, phase = speed_progress(get_store().events(run.id), run.settings["speed"]["repeats"])
    st.text(f"Showing speed run #{run.id}: {speed_description(run.settings)}.")
    job_status(run, fraction, f"Speed run #{run.id} · {run.status}", phase, "ph_speed_cancel", "Measure again to start anew.")
    if run.status == "done" and run.result:
        st.dataframe(speed_frame(run.result), hide_index=True)
        st.text("\n".join(speed_lines(run.result)))


def speed_panel(loaded: LoadedModel, model: dict, layers: LayerSet | None) -> None:
    """Measure (a background job) and show what removing `layers` (a block, any set, or sub-layers) buys."""
    st.subheader("Speed and memory")
    st.caption("Prefill latency, decode throughput and memory of the unpruned and the pruned model, timed one after the "
               "other in one process (fastest of the repeats), against the ideal L / (L − n): what the LM head, the "
               "embeddings and each step's Python keep from the ideal is measured too. Skipped sub-layers are timed "
               "as they run in memory (computing nothing); a saved model holds them as zero weights and is not faster.")
    if layers is None:
        return
    drop = drop_record(layers)
    with user_errors():
        settings = settings_form()
        settings.check()
        st.caption(estimate(loaded, settings))
        if st.button("Measure speed", key="ph_speed_start", disabled=layers.empty, help="A background job: it survives reloads."):
            st.session_state[RUN_KEY] = jobs.submit(get_store(), "speed", loaded.name, speed_settings(model, settings, drop),
                                                   owner=visitor())
    runs = speed_runs(get_store(), model["source"], drop, viewer())
    shown = st.session_state.get(RUN_KEY)
    if shown not in [run.id for run in runs]:  # another block or model: its newest measurement, if any
        shown = runs[0].id if runs else None
    if shown is None:
        st.caption("No speed measurement of these layers yet.")
        return
    job_view(shown, RUN_KEY, speed_view)

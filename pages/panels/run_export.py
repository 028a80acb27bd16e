"""The Runs page's export box for one run: its metrics, JSON, figures and mergekit YAML as
downloads, and where its saved model folder is (its server path for the operator only)."""

from __future__ import annotations

import streamlit as st

from explorer.core import policy
from explorer.kinds import metrics_frame, run_figures
from explorer.state.store import Run
from explorer.views.figures.export import figure_png, figures_html, png_export_available
from explorer.views.runs import mergekit_text, model_folder, run_json
from pages import visitor_policy


def operator() -> bool:
    """Whether this session sees server paths: only the operator (a loopback server)."""
    return policy.is_operator(visitor_policy())



def exports(run: Run, events: list[dict]) -> None:
    stem = f"run-{run.id}-{run.kind}"
    with st.container(horizontal=True):
        st.download_button("Metrics (CSV)", metrics_frame(run, events).to_csv(index=False), f"{stem}.csv", "text/csv",
                           key="runs_csv", on_click="ignore")
        st.download_button("Run (JSON)", run_json(run, events, operator()), f"{stem}.json", "application/json",
                           key="runs_json", on_click="ignore")
        if charts := run_figures(run, events):
            st.download_button("Figures (HTML)", lambda: figures_html(charts), f"{stem}.html", "text/html",
                               key="runs_html", on_click="ignore")
            if png_export_available():
                st.download_button("First figure (PNG)", lambda: figure_png(charts[0]), f"{stem}.png", "image/png",
                                   key="runs_png", on_click="ignore")
        if yaml := mergekit_text(run):
            unrepaired = "# NOTE:" in yaml
            st.download_button("mergekit YAML" + (" (unrepaired slice)" if unrepaired else ""), yaml,
                               f"{stem}-mergekit.yaml", "text/yaml", key="runs_yaml", on_click="ignore")
    if (folder := model_folder(run)) and operator():
        st.markdown("Saved model folder (loads with `AutoModelForCausalLM.from_pretrained`):")
        st.code(str(folder), language=None)
    elif folder:
        st.caption("The model is saved on the server; the operator can copy it from there.")

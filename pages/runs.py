"""Runs: every run in the store (similarity, metrics, brute-force, quick-eval, heal, sweep, ...); compare two,
export one (CSV, JSON, figures, model folder, mergekit YAML), cancel or delete one.

The one page where a visitor of a served room sees other visitors' runs: their settings and exports
show file names, never server paths (explorer.views.runs.hide_paths), and only the visitor who
started a run (or the operator) may cancel or delete it (explorer.core.policy); user-given text is plain text."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

import pandas as pd
import streamlit as st

from explorer import jobs
from explorer.core import policy
from explorer.core.errors import ExplorerError
from explorer.kinds import headline, run_figures
from explorer.state.store import Run
from explorer.views.compare import settings_differences
from explorer.views.figures.runs import comparison_figure
from explorer.views.runs import (
    delete_run,
    disk_usage,
    format_bytes,
    hide_paths,
    run_files,
    settings_summary,
    shown_settings,
)
from explorer.views.text import plain
from pages import cancel_button, get_store, show_page, user_errors, visitor, visitor_policy
from pages.panels.run_export import exports, operator

SELECTED_KEY, OTHER_KEY, CONFIRM_KEY = "runs_selected", "runs_other", "runs_confirm_delete"


def when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")


def label(run: Run) -> str:  # a select box shows its options as plain text
    return f"#{run.id} · {run.kind} · {run.model} · {run.status} · {when(run.created)}"


def runs_table(runs: list[Run]) -> pd.DataFrame:
    store = get_store()
    return pd.DataFrame([
        {"id": r.id, "kind": r.kind, "model": r.model, "status": r.status, "created": when(r.created),
         "disk": format_bytes(sum(map(disk_usage, run_files(store, r)))), "settings": settings_summary(r, operator()),
         "result": headline(r) if operator() else hide_paths(headline(r))}
        for r in runs
    ])


def figures(run: Run, events: list[dict], key: str) -> None:
    for i, fig in enumerate(run_figures(run, events)):
        st.plotly_chart(fig, width="content", key=f"{key}_fig{i}")


def delete(run: Run) -> None:
    """Delete with a confirmation step, only the files the run wrote, and those only when asked;
    a running job must be cancelled first (by whoever may cancel it)."""
    store = get_store()
    if run.status in jobs.ACTIVE:
        cancel_button(run, "runs_cancel")
        st.caption("A queued or running job is cancelled before it can be deleted.")
        return
    if not visitor_policy().delete:
        st.caption(f"Deleting runs is off on this server (operator: {policy.ALLOW_DELETE}=1).")
        return
    if not policy.owns(visitor_policy(), run.owner, visitor()):
        st.caption("Started by another visitor (or the command line): only they, or the operator, can delete it.")
        return
    if st.session_state.get(CONFIRM_KEY) != run.id:
        if st.button(f"Delete run #{run.id}…", key="runs_delete"):
            st.session_state[CONFIRM_KEY] = run.id
            st.rerun()
        return
    st.warning(f"Delete run #{run.id} ({run.kind}) and its events?")
    files = run_files(store, run)
    shown = [str(p) if operator() else p.name for p in files]
    remove = files and st.checkbox(f"Also delete the files it wrote ({format_bytes(sum(map(disk_usage, files)))}): "
                                   + plain(", ".join(shown)), value=False, key="runs_delete_files")
    yes, no = st.columns(2)
    if yes.button("Yes, delete", type="primary", key="runs_delete_yes"):
        freed = delete_run(store, run, visitor_policy(), files if remove else [], visitor())
        st.session_state.pop(CONFIRM_KEY, None)
        st.session_state.pop(SELECTED_KEY, None)
        st.toast(f"Run #{run.id} deleted" + (f", {format_bytes(freed)} freed." if remove else "."))
        st.rerun()
    if no.button("Keep it", key="runs_delete_no"):
        st.session_state.pop(CONFIRM_KEY, None)
        st.rerun()


def details(run: Run, events: list[dict], key: str) -> None:
    st.markdown(f"**#{run.id} · {run.kind}** · {plain(run.model)} · *{run.status}* · created {when(run.created)}, "
                f"updated {when(run.updated)} ({run.updated - run.created:.0f} s)")
    st.markdown(f"Result: {plain(headline(run) if operator() else hide_paths(headline(run)))}")
    settings = shown_settings(run, operator())
    st.dataframe(pd.DataFrame({"setting": list(settings), "value": [str(v) for v in settings.values()]}),
                 hide_index=True, key=f"{key}_settings")
    figures(run, events, key)


def comparison(run: Run, events: list[dict], other: Run) -> None:
    """Both runs' curves on shared axes (two heals or two sweeps) and only the settings that differ."""
    other_events = get_store().events(other.id)
    if fig := comparison_figure(run, events, other, other_events):
        st.plotly_chart(fig, key="runs_compare")
    differences = settings_differences(*(replace(r, settings=shown_settings(r, operator())) for r in (run, other)))
    st.markdown("**Settings that differ**" if len(differences) else "**The two runs have the same settings.**")
    if len(differences):
        st.dataframe(differences, hide_index=True, key="runs_diff")


def pick(runs: list[Run], key: str, text: str, allow_none: bool = False) -> Run | None:
    """A run chooser that survives deletion: a vanished choice says so and falls back."""
    by_id = {r.id: r for r in runs}
    chosen = st.session_state.get(key)
    if chosen is not None and chosen not in by_id:
        st.warning(f"Run #{chosen} no longer exists (it was deleted); showing another run.")
        del st.session_state[key]
    options = ([None] if allow_none else []) + list(by_id)
    run_id = st.selectbox(text, options, key=key, format_func=lambda i: "—" if i is None else label(by_id[i]))
    return by_id.get(run_id)


def main() -> None:
    st.title("🗂️ Runs")
    store = get_store()
    with user_errors():
        jobs.reap(store)
    runs = store.list_runs()
    if not runs:
        st.info("No runs yet: compute a heatmap, prune, heal or sweep and it appears here.")
        return
    kinds = st.multiselect("Kinds", sorted({r.kind for r in runs}), key="runs_kinds", placeholder="all kinds")
    runs = [r for r in runs if not kinds or r.kind in kinds]
    st.dataframe(runs_table(runs), hide_index=True, key="runs_list",
                 column_config={"settings": st.column_config.TextColumn(width="large"),
                                "result": st.column_config.TextColumn(width="large")})
    if not runs:
        return
    run = pick(runs, SELECTED_KEY, "Run")
    other = pick([r for r in runs if r.id != run.id], OTHER_KEY, "Compare with", allow_none=True)
    try:
        events = store.events(run.id)
        if other is None:
            details(run, events, "a")
        else:
            comparison(run, events, other)
            left, right = st.columns(2)
            with left:
                details(run, events, "a")
            with right:
                details(other, store.events(other.id), "b")
        st.subheader("Export")
        exports(run, events)
        st.subheader("Delete")
        delete(run)
    except ExplorerError as exc:  # e.g. the run was deleted by another session meanwhile
        st.error(plain(exc), icon="🚫")


show_page("Runs", main)

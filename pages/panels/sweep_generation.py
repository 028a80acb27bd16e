"""The Sweep page's generation part: the form's generation task and free continuations, the
generative curve beside the likelihood one, the repetition rate, and the linear repairs' verdicts
on the sweep's own text (explorer.views.figures.sweep and explorer.experiments.sweep compute)."""

from __future__ import annotations

import streamlit as st

from explorer.evaluation.tasks import generation_task_names
from explorer.experiments.sweep import curve_name, describe_verdict, first_at_chance, point_repair, repair_verdicts
from explorer.views.figures.sweep import generation_figure, repetition_figure
from explorer.views.forms.sweep import LABELS
from explorer.views.text import plain

NONE = ""  # no generation task

GENERATION_TEXT = """
**What pruning loses.** The bold line asks the same kind of question but lets the model *write* the
answer; the thin line is the likelihood scoring above, which only ranks given choices. Likelihood
scoring flatters pruning: a model can still rank the right capital first long after it has stopped
writing it. Where the bold line reaches 0 the model writes no right answer at all.
"""


def generation_inputs(state: dict) -> dict:
    """The generation settings of the form (SweepSettings' gen_task, gen_limit, continuations)."""
    with st.expander("Generation: what pruning loses"):
        a, b, c = st.columns(3)
        tasks = [NONE, *generation_task_names()]
        gen_task = a.selectbox(**LABELS["sw_gen_task"], options=tasks, index=tasks.index(state["sw_gen_task"]), key="sw_gen_task",
                               format_func=lambda name: name or "none")
        gen_limit = int(b.number_input(**LABELS["sw_gen_limit"], min_value=1, max_value=100_000, value=state["sw_gen_limit"],
                                       key="sw_gen_limit"))
        continuations = int(c.number_input(**LABELS["sw_continuations"], min_value=0, max_value=4096,
                                           value=state["sw_continuations"], key="sw_continuations"))
    return {"gen_task": gen_task, "gen_limit": gen_limit, "continuations": continuations}


def generation_plots(points: list[dict], x_max: float | None) -> None:
    """The generative curve, the repetition rate and the repair verdicts, for the points that have them
    (`x_max`: the plan's largest fraction, as the likelihood plots' axis)."""
    if any(p.get("gen_accuracy") is not None for p in points):
        left, right = st.columns([3, 1])
        left.plotly_chart(generation_figure(points, x_max), key="sw_gen")
        right.markdown(GENERATION_TEXT)
        floors = []
        for strategy, repair in sorted({(p["strategy"], point_repair(p)) for p in points}):
            hit = first_at_chance(points, strategy, repair, "gen_")
            floors.append(f"**{curve_name(strategy, repair)}**: " + (f"from {hit['fraction']:.0%} (n = {hit['n']})" if hit else "never"))
        st.caption("Accuracy by generation first reaches its floor (no right answer within its 95% interval): " + "; ".join(floors))
    if any(p.get("repetition_4") is not None for p in points):
        st.plotly_chart(repetition_figure(points, x_max), key="sw_rep")
    for verdict in repair_verdicts(points):
        (st.warning if verdict["hurts"] else st.caption)(plain(describe_verdict(verdict)))

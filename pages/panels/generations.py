"""The Prune & heal page's generation pane: the completions of its prompt by every model it compared,
the linear repair's verdict on the evaluation text, and on request the same prompts side by side for
the unpruned, pruned, repaired and healed models (explorer.views.generations computes; this draws)."""

from __future__ import annotations

import streamlit as st

from explorer.core.errors import ExplorerError
from explorer.evaluation.tasks import generation_task_names
from explorer.lm.models import LoadedModel
from explorer.state.store import Run
from explorer.views.generations import DEFAULT_PROMPTS, generative_scores, prompt_lines, repair_verdict, side_by_side
from explorer.views.preview import rebuilt_preview
from explorer.views.text import plain
from pages import get_store, user_errors
from pages.panels.model import cached_model

TABLE_KEY, SCORES_KEY = "ph_gen_table", "ph_gen_scores"


def generation_pane(loaded: LoadedModel, run: Run, heal_run_id: int | None) -> None:
    """`run`: the stored prune comparison (a "preview" run) the page shows."""
    rows = run.result["rows"]
    if run.settings["repair"] == "linear" and (verdict := repair_verdict(rows, run.settings["evaluation"]["source"])):
        (st.warning if verdict[1] else st.caption)(plain(verdict[0]))
    for column, (name, row) in zip(st.columns(len(rows)), rows.items()):
        column.markdown(f"**{name.capitalize()} completes**")
        column.code(row["completion"], language=None, wrap_lines=True)
    with st.expander("Side by side: more prompts, every model (greedy)"):
        text = st.text_area("Prompts, one a line (\\n for a line break)", "\n".join(p.replace("\n", "\\n") for p in DEFAULT_PROMPTS),
                            key="ph_gen_prompts")
        healed = _healed_folder(heal_run_id)
        with_healed = bool(healed) and st.checkbox(f"Include the healed model of run #{heal_run_id}", key="ph_gen_healed",
                                                   help="Loads the merged model the heal run saved.")
        if st.button("Generate", key="ph_gen"):
            with user_errors(), st.spinner("Generating…"):
                st.session_state[TABLE_KEY] = side_by_side(_models(loaded, run, with_healed and healed), prompt_lines(text))
        if (table := st.session_state.get(TABLE_KEY)) is not None:
            st.dataframe(table, hide_index=True)  # plain text cells: prompts and completions are never markdown
        task, limit, score = st.columns(3, vertical_alignment="bottom")
        chosen = task.selectbox("Generation task", generation_task_names(), key="ph_gen_task",
                                index=generation_task_names().index("quiz-capitals-gen"))
        questions = int(limit.number_input("Questions", min_value=1, max_value=1000, value=16, key="ph_gen_limit"))
        if score.button("Score every model", key="ph_gen_score"):
            with user_errors(), st.spinner("Generating answers…"):
                st.session_state[SCORES_KEY] = generative_scores(_models(loaded, run, with_healed and healed), chosen, questions)
        if (scores := st.session_state.get(SCORES_KEY)) is not None:
            st.dataframe(scores, hide_index=True)


def _models(loaded: LoadedModel, run: Run, healed: str | None) -> dict[str, LoadedModel]:
    """The pane's models: unpruned, pruned, the linear repair (when made: refitted, deterministic) and
    the saved healed model (when asked)."""
    preview = rebuilt_preview(loaded, run)
    block = preview.result.block
    models = {"unpruned": loaded, "pruned": loaded.pruned(block.start, block.n, True)}
    if preview.repair is not None:
        models["linear repair"] = preview.result.loaded
    if healed:
        models["LoRA healed"] = cached_model(healed, str(loaded.device), False, False)
    return models


def _healed_folder(run_id: int | None) -> str | None:
    """The merged model a finished heal run saved, if it saved one (and the run still exists)."""
    try:
        run = get_store().get_run(run_id) if run_id is not None else None
    except ExplorerError:  # deleted meanwhile
        return None
    return (run.result or {}).get("folder") if run is not None and run.status == "done" else None

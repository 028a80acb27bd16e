"""The Prune & heal page's healing form: the paper-recipe button and the HealConfig widgets (labels
from the settings' own help, as the CLI's options). A run the page follows sets the form to its
settings; a value the form cannot offer (a CLI heal's --text-file) is added as a choice of its own,
so following that run never breaks the page."""

from __future__ import annotations

import streamlit as st

from explorer.evaluation.tasks import default_eval_task, task_names
from explorer.lm.data import C4, EMBEDDED
from explorer.lm.models import LoadedModel, pick_device
from explorer.surgery.heal import HealConfig
from explorer.surgery.recipe import recipe_for
from explorer.views.preview import (
    HEAL_LABELS,
    HEAL_NUMBERS,
    heal_config,
    heal_defaults,
    recipe_caption,
    recipe_widget_values,
)
from explorer.views.runs import source_name
from pages.panels.heal_objective import heal_objective

RECIPE_KEY = "ph_recipe"  # the paper recipe last applied (explorer.surgery.recipe.PaperRecipe.to_json())


def with_value(options: list, value) -> list:
    """The widget's options, plus the value it must show when a followed run used another one."""
    return options if value in options else [*options, value]


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
        tasks, sources = with_value(task_names(), d["ph_task"]), with_value([EMBEDDED, C4], d["ph_source"])
        values["ph_task"] = c[1].selectbox(**HEAL_LABELS["ph_task"], options=tasks, index=tasks.index(d["ph_task"]), key="ph_task")
        values["ph_source"] = c[2].selectbox(**HEAL_LABELS["ph_source"], options=sources, index=sources.index(d["ph_source"]),
                                             key="ph_source", format_func=source_name)
        values.update(heal_objective(d))  # targets, objective, data (pages/panels/heal_objective.py)
    return heal_config(values, st.session_state.get(RECIPE_KEY))

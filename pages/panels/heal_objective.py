"""The Prune & heal form's choice of what trains and toward what: LoRA targets or the last layers,
the objective (next-token loss or distillation from the unpruned model) and the training data
(the text or the unpruned model's own continuations). Labels and help come from HealConfig
(explorer.views.preview); the values go back to the page's heal_config."""

from __future__ import annotations

import streamlit as st

from explorer.surgery.distill import DATA, OBJECTIVES
from explorer.surgery.heal import TARGETS
from explorer.views.preview import DATA_NAMES, DISTILL_NUMBERS, HEAL_LABELS, OBJECTIVE_NAMES, TARGET_NAMES


def heal_objective(defaults: dict) -> dict:
    """Draw the widgets; their values by widget key (`defaults`: the form's starting values)."""
    values = {"ph_targets": st.radio(**HEAL_LABELS["ph_targets"], options=TARGETS, index=TARGETS.index(defaults["ph_targets"]),
                                     key="ph_targets", horizontal=True, format_func=TARGET_NAMES.get)}
    left, right = st.columns(2)
    values["ph_objective"] = left.radio(**HEAL_LABELS["ph_objective"], options=OBJECTIVES, key="ph_objective",
                                        index=OBJECTIVES.index(defaults["ph_objective"]), format_func=OBJECTIVE_NAMES.get)
    values["ph_data"] = right.radio(**HEAL_LABELS["ph_data"], options=DATA, index=DATA.index(defaults["ph_data"]),
                                    key="ph_data", format_func=DATA_NAMES.get)
    for column, (key, label, options) in zip(st.columns(len(DISTILL_NUMBERS)), DISTILL_NUMBERS):
        values[key] = column.number_input(label, value=defaults[key], key=key, **options)
    st.caption("Distillation and self data learn from the unpruned model. The pruned model trains on the unpruned "
               "model's very weights, so the teacher costs its removed layers and its logits, not a second model.")
    return values

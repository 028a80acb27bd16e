"""The Sweep page's form: widget keys of SweepSettings' fields, their labels, and the values that make
the form show a preset or a saved sweep."""

from __future__ import annotations

from explorer.core.options import widget
from explorer.experiments.sweep.settings import SweepSettings

WIDGETS = {  # the Sweep page's widget key -> SweepSettings field
    "sw_strategies": "strategies", "sw_stride": "stride", "sw_task": "task", "sw_limit": "limit",
    "sw_heal": "heal_steps", "sw_text": "text", "sw_val": "val_samples", "sw_sim": "sim_samples",
    "sw_seq": "seq_len", "sw_batch": "batch_size", "sw_repair": "repair", "sw_speed": "speed",
    "sw_heal_objective": "heal_objective",
    "sw_gen_task": "gen_task", "sw_gen_limit": "gen_limit", "sw_continuations": "continuations",
}


MODES = ["Every n with a stride", "Chosen fractions"]  # the page's choice of block sizes


LABELS = {key: widget(SweepSettings, name) for key, name in {**WIDGETS, "sw_fractions": "fractions"}.items()}  # label, help


def widget_values(settings: SweepSettings) -> dict:
    """The Sweep page's widget values for these settings, so the form shows a preset or saved sweep."""
    values = {key: getattr(settings, name) for key, name in WIDGETS.items()}
    values["sw_strategies"] = list(settings.strategies)
    if settings.fractions is not None:
        return {**values, "sw_mode": MODES[1], "sw_fractions": ", ".join(f"{f:g}" for f in settings.fractions)}
    return {**values, "sw_mode": MODES[0], "sw_fractions": "0, 0.1, 0.2, 0.3, 0.4, 0.5"}

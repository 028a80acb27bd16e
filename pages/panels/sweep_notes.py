"""What the Sweep page says before a sweep starts: whether the similarity strategy's heatmap is cached
(and a button to compute it now, stored even if the tab closes meanwhile), and how long the sweep
will take on this machine, from its earlier sweeps of the model (explorer.views.progress)."""

from __future__ import annotations

import streamlit as st

from explorer.experiments.sweep import SweepSettings
from explorer.lm.models import LoadedModel
from explorer.state.cache import cached_distances, distances_run
from explorer.views.progress import estimate_sweep, estimate_text, machine_load
from pages import get_store, visitor
from pages.panels.progress import steady_progress


def heatmap_notice(loaded: LoadedModel, settings: SweepSettings) -> None:
    """The similarity strategy needs a heatmap: say whether one is cached, offer to compute it now."""
    if "similarity" not in settings.strategies or distances_run(get_store(), loaded, settings.text, settings.sim_samples,
                                                                   settings.seq_len):
        return
    st.info("No similarity heatmap is cached for these text settings: the sweep computes it first "
            "(one forward pass per batch), or compute it now.")
    if st.button("Compute the heatmap now", key="sw_heatmap"):
        with steady_progress("Forward passes…") as update:
            run_id, _, _ = cached_distances(loaded, settings.text, settings.sim_samples, settings.seq_len, settings.batch_size,
                                            store=get_store(), progress=lambda done, total: update(done / total, f"{done} / {total} samples"))
        get_store().add_visitor(run_id, visitor())
        st.rerun()


def estimate(loaded: LoadedModel, settings: SweepSettings) -> None:
    """How long the sweep will take on this machine, from its earlier sweeps of this model."""
    points = len(settings.block_sizes(loaded.num_layers)) * len(settings.strategies) * (
        1 + (settings.repair == "linear") + (settings.heal_steps > 0))
    seconds = estimate_sweep(get_store(), loaded.name, settings.limit, points, settings.heal_steps > 0)
    st.caption(f"{points} points: " + estimate_text(seconds, "sweep", *machine_load()))

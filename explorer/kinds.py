"""Every kind of run the store holds, in one registry: what it is called, how it runs in the
background when it is a job, and how the Runs page sums it up, tabulates and draws it.

mergekit keeps its merge methods as a small interface plus a list; run kinds are the same here, so
the job runner, the Runs page headline, its CSV and its figures look a kind up instead of testing
names in if-chains, and a new kind is one entry (tests/test_kinds.py checks each has what it needs).
It sits on top of the layers because its entries join them: runners from experiments/, the rest
from views/.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import pandas as pd
import plotly.graph_objects as go

from explorer.experiments.classify import execute as classify
from explorer.experiments.heal import heal_job
from explorer.experiments.speed import speed_job
from explorer.experiments.sweep import execute as sweep
from explorer.state.store import Run, Store
from explorer.views import runs as views
from explorer.views.figures import runs as figures
from explorer.views.preview import preview_headline, preview_table
from explorer.views.speed import speed_headline, speed_table

Runner = Callable[[Store, Run, Callable[[], bool]], dict]


@dataclass(frozen=True)
class RunKind:
    """One kind of run. `runner` is set for background jobs (explorer.jobs runs it in its own
    process); the others are computed in the caller's process and cached in the store. `headline`,
    `table` and `figures` return None / [] when they have nothing for a run (then the generic
    result view applies)."""

    name: str
    label: str
    runner: Runner | None = None
    headline: Callable[[Run], str | None] = lambda run: None
    table: Callable[[Run, list[dict]], pd.DataFrame | None] = lambda run, events: None
    figures: Callable[[Run, list[dict]], list[go.Figure]] = lambda run, events: []


KINDS: dict[str, RunKind] = {kind.name: kind for kind in (
    RunKind("similarity", "similarity heatmap", headline=views.similarity_headline, table=views.similarity_table,
            figures=figures.similarity_figures),
    RunKind("metrics", "metric comparison", headline=views.metrics_headline, table=views.metrics_table,
            figures=figures.metrics_figures),
    RunKind("brute-force", "brute-force loss", headline=views.brute_force_headline, table=views.brute_force_table),
    RunKind("sublayers", "sub-layer scores", headline=views.sublayers_headline),
    RunKind("selection", "iterative layer selection", headline=views.selection_headline),
    RunKind("quick-eval", "evaluation (loss and accuracy)"),
    RunKind("reference-predictions", "the unpruned model's answers"),
    RunKind("preview", "prune comparison (the Prune page)", headline=preview_headline, table=preview_table),
    RunKind("self-data", "the unpruned model's own text (self-data healing)"),
    RunKind("heal", "prune and heal", runner=heal_job, headline=views.heal_headline, figures=figures.heal_figures),
    RunKind("sweep", "phase-transition sweep", runner=lambda store, run, stop: sweep(store, run.id, should_stop=stop),
            headline=views.sweep_headline, table=views.sweep_table, figures=figures.sweep_figures),
    RunKind("classify", "classification after cutting", runner=lambda store, run, stop: classify(store, run.id, should_stop=stop),
            figures=figures.classify_figures),
    RunKind("speed", "speed and memory", runner=speed_job, headline=speed_headline, table=speed_table),
)}


def job_kinds() -> tuple[str, ...]:
    """The kinds that run as background jobs."""
    return tuple(name for name, kind in KINDS.items() if kind.runner is not None)


def _kind(run: Run) -> RunKind:
    return KINDS.get(run.kind, RunKind(run.kind, run.kind))


def headline(run: Run) -> str:
    """The one number a user looks for first, by kind; the error for failed runs."""
    if run.status in ("failed", "cancelled"):
        return f"{run.status}: {run.error or ''}".strip()
    if not run.result:
        return run.status
    return _kind(run).headline(run) or views.result_headline(run.result)


def metrics_frame(run: Run, events: list[dict]) -> pd.DataFrame:
    """The run's numbers as one table: what the CSV export writes."""
    table = _kind(run).table(run, events)
    return table if table is not None else views.events_table(run, events)


def run_figures(run: Run, events: list[dict]) -> list[go.Figure]:
    """The run's plotly figures, for the kinds that have them (what the page shows and exports)."""
    return _kind(run).figures(run, events)

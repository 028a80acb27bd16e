"""Which runs a page may open on, and which it opens first: one rule for every page.

A visitor of a served room sees, on the Similarity, Prune & heal, Sweep and Classification pages,
only runs their own session started or was shown (the store's run_visitors, keyed by the random
visitor key the pages keep in the address); other visitors' runs appear on the Runs page alone,
with their server paths hidden (explorer.views.runs.shown_settings). The operator (the person at
a loopback server: visitor None here) sees every run. A fresh session opens on the newest of these
runs for the model it shows, or on the page's defaults when there is none.

"For the model" is one rule too: a run's `model` column names the model as it loads (the
embedded model's name, or the source typed), and runs keyed by weights (heatmaps, previews) must
also carry this model's fingerprint in their cache key.
"""

from __future__ import annotations

from explorer.lm.models import EMBEDDED, EMBEDDED_NAME
from explorer.state.store import Run, Store


def model_name(source: str) -> str:
    """The name a run records for a model source: the embedded model's own name, else what was typed
    (a job stored from the CLI recorded 'embedded', a page the loaded name: both mean the same model)."""
    source = source.strip()
    return EMBEDDED_NAME if source == EMBEDDED else source


def page_runs(store: Store, kind: str, visitor: str | None, model: str | None = None,
              fingerprint: str | None = None, status: str | None = None) -> list[Run]:
    """This visitor's runs of `kind` (every run for the operator, visitor None), newest first; with
    `model` (a source or a loaded model's name) only that model's, with `fingerprint` only those
    computed on exactly these weights."""
    runs = store.list_runs(kind, status, visitor=visitor)
    if model is not None:
        runs = [r for r in runs if model_name(r.model) == model_name(model)]
    if fingerprint is not None:
        runs = [r for r in runs if (r.cache_key or "").startswith(f"{fingerprint}|")]
    return runs


def first_run(store: Store, kind: str, visitor: str | None, model: str | None = None,
              fingerprint: str | None = None, status: str | None = None) -> Run | None:
    """The run a fresh session of a page shows: this visitor's newest of this kind for the model
    (a running job is newer than the finished ones before it), or None for the page's defaults."""
    runs = page_runs(store, kind, visitor, model, fingerprint, status)
    return runs[0] if runs else None

"""What every page shares: navigation, the visitor key, cached store, error display, job views.

Kept here (not in `explorer/`) because it is Streamlit glue; it computes nothing itself. It is
the package's `__init__` so Streamlit's discovery of `pages/*.py` does not list it as a page. The
model picker and the loaded model are in pages/panels/model.py.

Navigation: Streamlit discovers the scripts in `pages/` itself (so a bookmarked page URL works
even right after a server restart, which `st.navigation` with a `pages/` folder does not), its
own file-name list is hidden in `.streamlit/config.toml`, and `page_setup` draws this one.

Visitors: each browser session gets a random visitor key, kept in the address (`?visitor=...`,
carried by the navigation links) so a reload keeps it; runs the session starts are stored with it
(explorer.core.policy, explorer.views.session). Never shown on a page.
"""

from __future__ import annotations

import re
import secrets
from contextlib import contextmanager
from typing import Callable, Iterator

import streamlit as st

from explorer import jobs
from explorer.core import policy
from explorer.core.errors import ExplorerError
from explorer.core.paths import explorer_home
from explorer.core.threads import configure
from explorer.state.store import Run, Store
from explorer.views.text import plain

VISITOR_KEY = "visitor"
VISITOR_FORM = re.compile(r"[A-Za-z0-9_-]{22}")  # secrets.token_urlsafe(16)

NAVIGATION = (
    ("app.py", "Home", "🏠"),
    ("pages/similarity.py", "Similarity heatmap", "🗺️"),
    ("pages/prune_heal.py", "Prune & heal", "🩹"),
    ("pages/sweep.py", "Phase-transition sweep", "📉"),
    ("pages/classify.py", "Classification after cutting", "🏋️"),
    ("pages/metrics.py", "Metric comparison", "⚖️"),
    ("pages/runs.py", "Runs", "🗂️"),
)


def visitor() -> str:
    """This session's visitor key: from the session, else from the address (a reload), else new."""
    key = st.session_state.get(VISITOR_KEY) or st.query_params.get(VISITOR_KEY, "")
    if not VISITOR_FORM.fullmatch(key):
        key = secrets.token_urlsafe(16)
    st.session_state[VISITOR_KEY] = key
    if st.query_params.get(VISITOR_KEY) != key:
        st.query_params[VISITOR_KEY] = key
    return key


def viewer() -> str | None:
    """Whose runs the pages open on: None for the operator (a loopback server: every run), else this visitor."""
    return None if policy.is_operator(visitor_policy()) else visitor()


def page_setup(title: str) -> None:
    """Wide layout, the tab title, the server's torch threads and the sidebar navigation; every page calls it first."""
    st.set_page_config(page_title=f"{title} · Layer-Pruning Explorer", page_icon="✂️", layout="wide")
    configure("server")  # leave most cores to the job runner (explorer/threads.py)
    key = visitor()
    with st.sidebar:
        for path, label, icon in NAVIGATION:
            st.page_link(path, label=label, icon=icon, query_params={VISITOR_KEY: key})
        st.divider()


@st.cache_resource
def get_store() -> Store:
    return Store()


def show_page(title: str, main: Callable[[], None]) -> None:
    """Set the page up and draw it; an ExplorerError nothing nearer caught (a damaged or read-only
    store, say) becomes one message instead of a traceback."""
    page_setup(title)
    with user_errors():
        main()


def visitor_policy() -> policy.Policy:
    """What visitors may do, from the address the server listens on and the operator's environment."""
    return policy.server_policy(st.get_option("server.address"))


def check_text(source: str) -> None:
    """Refuse a text file on the server unless the operator allows paths (uploads always pass)."""
    policy.check_text_source(visitor_policy(), source, explorer_home() / "uploads")


@contextmanager
def user_errors() -> Iterator[None]:
    """Show an ExplorerError as one sentence instead of a traceback (as plain text: it may quote
    what a visitor typed)."""
    try:
        yield
    except ExplorerError as exc:
        st.error(plain(exc), icon="🚫")


def _reaped_run(run_id: int, run_key: str, missing: str) -> Run | None:
    """The run after marking dead jobs failed, or None (with a warning, and the page forgets the
    run) when it was deleted meanwhile."""
    store = get_store()
    try:
        jobs.reap(store)
        return store.get_run(run_id)
    except ExplorerError as exc:
        st.warning(f"{plain(exc)} {missing}".strip())
        st.session_state.pop(run_key, None)
        return None


@st.fragment(run_every=2)
def _poll_job(run_id: int, run_key: str, draw: Callable[[Run], None], missing: str) -> None:
    """Redraws every 2 s without re-running the page around it; re-runs the whole page once when the
    job ends, so the finished run is drawn by the page itself."""
    if run := _reaped_run(run_id, run_key, missing):
        if run.status not in jobs.ACTIVE:
            st.rerun()
        draw(run)


def job_view(run_id: int, run_key: str, draw: Callable[[Run], None], missing: str = "") -> None:
    """`draw(run)` for a background job's run (heal, sweep): live while it is queued or running."""
    if run := _reaped_run(run_id, run_key, missing):
        if run.status in jobs.ACTIVE:
            _poll_job(run_id, run_key, draw, missing)
        else:
            draw(run)


def cancel_button(run: Run, key: str) -> None:
    """Cancel for the visitor who started the run (or the operator); others are told who can."""
    if policy.owns(visitor_policy(), run.owner, visitor()):
        if st.button("Cancel", key=key):
            with user_errors():
                jobs.cancel_as(get_store(), run.id, visitor_policy(), visitor())
    else:
        st.caption("Started by another visitor (or the command line): only they, or the operator "
                   "(`python -m explorer cancel RUN_ID`), can cancel it.")


def job_status(run: Run, fraction: float, status: str, doing: str | None, cancel_key: str, cancelled: str) -> None:
    """A background job's status line: a progress bar with what it does (or what a queued job waits
    for) and a Cancel button while it runs, else its outcome (`cancelled`: what to tell the user then)."""
    if run.status in jobs.ACTIVE:
        doing = jobs.queue_reason(get_store(), run.id) if run.status == "queued" else doing or "starting"
        st.progress(fraction if run.status == "running" else 0.0, text=plain(f"{status} · {doing}"))
        cancel_button(run, cancel_key)
    elif run.status == "failed":
        st.error(plain(f"{status}: {run.error}"), icon="🚫")
    elif run.status == "cancelled":
        st.info(f"{plain(status)}: cancelled. {cancelled}".strip())
    else:
        st.success(plain(status))


def points_status(run: Run, done: int, total: int | None, doing: str | None, cancel_key: str, cancelled: str) -> None:
    """job_status for a point-by-point job (sweep, classification): points done / total."""
    status = f"Run #{run.id} · {run.status} · {done}{f' / {total}' if total else ''} points"
    job_status(run, done / total if total else 0.0, status, doing, cancel_key, cancelled)


def download_row(buttons: list[tuple], note: str | None = None) -> None:
    """Download buttons side by side, each (label, data, file name, mime, key); data may be a
    callable, built only on click. `note` (a caption) closes the row."""
    with st.container(horizontal=True):
        for label, data, name, mime, key in buttons:
            st.download_button(label, data, name, mime, key=key, on_click="ignore")
        if note:
            st.caption(note)

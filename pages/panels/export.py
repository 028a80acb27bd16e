"""The export box under a pruned model on the Prune & heal page: how to rebuild it elsewhere (the
mergekit YAML and the llama.cpp command side by side), Save (the folder with its model card, and a
GGUF when ticked, explorer.export) and, where the operator allows it (explorer.core.policy's
EXPLORER_ALLOW_PUSH; on loopback the user is the operator), Push to the Hugging Face hub."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import streamlit as st

from explorer.core import policy
from explorer.export.gguf import GGUF_FILE
from explorer.export.hub import check_hub_ready, push, push_plan
from explorer.export.llamacpp import llama_quantize_command, pruned_name
from explorer.export.mergekit import mergekit_yaml
from explorer.lm.blocks import LayerSet
from explorer.views.text import plain
from pages import user_errors, visitor_policy

GGUF_HELP = ("Also write model.gguf for llama.cpp, Ollama or LM Studio: a GGUF model (the embedded one) loses the layers "
             "directly, its kept tensors copied still quantized; a repaired or Hugging Face model is converted (f16).")


def rebuild_elsewhere(source: str, block: LayerSet) -> None:
    with st.expander("Rebuild it elsewhere: mergekit and llama.cpp"):
        left, right = st.columns(2)
        left.caption("mergekit passthrough from the hub checkpoint (`mergekit-yaml prune.yaml OUT`)")
        left.code(mergekit_yaml(source, block.num_layers, block), language="yaml")
        right.caption("llama.cpp on the GGUF (`llama-quantize --prune-layers`, tensors copied as they are)")
        right.code(llama_quantize_command(source, block), language="bash")


def push_box(folder: Path) -> None:
    if not visitor_policy().push:
        st.caption(f"Pushing to the Hugging Face hub is off on this server (operator: {policy.ALLOW_PUSH}=1).")
        return
    with st.container(horizontal=True, vertical_alignment="bottom"):
        repo = st.text_input("Hugging Face repo", key="ph_repo", placeholder="you/model-pruned", width=320)
        if st.button("Push to hub", key="ph_push", help="Uploads the saved folder with the server's Hugging Face token."):
            with user_errors():
                policy.check_push(visitor_policy())  # the action checks the rule too, not only the drawing
                plan = push_plan(repo, folder)
                st.success(f"Pushed {len(plan.files)} files to {push(plan, check_hub_ready())}.")


def export_panel(source: str, block: LayerSet, pruned: dict, save: Callable[[bool], Path], changed: str | None) -> None:
    """Draw the box for the session's pruned model (`pruned`: where it was saved); `save(with_gguf)`
    writes its folder; `changed` says why mergekit's slice is not this model (its repair), if it is not."""
    rebuild_elsewhere(source, block)
    with st.container(horizontal=True, vertical_alignment="bottom"):
        st.download_button("mergekit YAML" + (" (unrepaired slice)" if changed else ""),
                           mergekit_yaml(source, block.num_layers, block, changed=changed),
                           f"{pruned_name(source, block).removesuffix('.gguf')}.yaml", "text/yaml", on_click="ignore", key="ph_yaml",
                           help="mergekit stacks the original layers: it rebuilds the pruned model without its linear "
                                "repair." if changed else None)
        with_gguf = not block.sublayers and st.checkbox("with GGUF", key="ph_with_gguf", help=GGUF_HELP)
        if st.button("Save pruned model", key="ph_save"):
            with user_errors():
                pruned["saved"] = str(save(with_gguf))
    if not pruned["saved"]:
        return
    folder = Path(pruned["saved"])
    gguf = folder / GGUF_FILE
    st.info(plain(f"Saved to {folder} (weights, tokenizer, model card README.md, run.json, mergekit.yaml"
                  f"{', model.gguf' if gguf.is_file() else ''})."))
    if gguf.is_file():
        st.download_button("Download GGUF", gguf.read_bytes, pruned_name(source, block), "application/octet-stream",
                           on_click="ignore", key="ph_gguf_download")
    push_box(folder)

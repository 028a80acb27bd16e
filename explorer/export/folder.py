"""Keep a pruned (or healed) model: a `save_pretrained` folder that reloads with
`AutoModelForCausalLM.from_pretrained`, a JSON record of the run, and a mergekit
passthrough config that rebuilds the same model from the original checkpoint.

The mergekit YAML matters because the saved folder holds the weights of one machine's run;
the YAML is a few lines anyone can re-run against the hub checkpoint (`mergekit-yaml
mergekit.yaml OUT`) to get the unhealed pruned model, as in the paper's released recipes.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from pathlib import Path

from torch import nn

from explorer.lm.blocks import Block
from explorer.core.errors import ExplorerError
from explorer.lm.models import EMBEDDED, WRITE_ERRORS, LoadedModel

# The hub checkpoint the embedded GGUF was quantized from (mergekit cannot read GGUF files).
EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
RECORD_FILE = "run.json"


def _mergeable(model: nn.Module) -> nn.Module:
    """A plain transformers model: a peft model is merged on a copy, so a live adapter keeps training."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        return copy.deepcopy(model).merge_and_unload()
    return model


DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}  # what a user picks -> torch's name


def _cast_state(model: nn.Module, dtype: str) -> dict:
    """The model's state dict with floating tensors in `dtype`, the model itself untouched.
    Tied tensors (embeddings and LM head) stay one tensor, so they are still saved once."""
    import torch

    if dtype not in DTYPES:
        raise ExplorerError(f"Unknown weight type '{dtype}': choose one of {', '.join(DTYPES)}.")
    target, cast = getattr(torch, DTYPES[dtype]), {}
    return {name: cast.setdefault(t.data_ptr(), t.to(target)) if t.is_floating_point() else t
            for name, t in model.state_dict().items()}


def save_pruned(loaded: LoadedModel, folder: str | Path, record: dict, dtype: str | None = None) -> Path:
    """Write weights, config, tokenizer and `run.json` (the record) to `folder`; returns the folder.
    `dtype` ("fp32", "bf16", "fp16") saves the weights in that type (bf16 halves an fp32 model's
    size); None keeps the loaded type.

    Everything is written to a scratch folder beside `folder` first and moved in once complete,
    so a full disk or a read-only folder leaves no half-written model that would fail to load
    later, and keeps whatever `folder` already held."""
    folder = Path(folder)
    model = _mergeable(loaded.model)
    scratch = None
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f".{folder.name}-partial-", dir=folder.parent))
        model.save_pretrained(scratch, state_dict=_cast_state(model, dtype) if dtype else None)
        if dtype:  # config.json records the type the weights now have, so from_pretrained loads them as saved
            config = json.loads((scratch / "config.json").read_text())
            config["dtype"] = DTYPES[dtype]
            (scratch / "config.json").write_text(json.dumps(config, indent=2))
        loaded.tokenizer.save_pretrained(scratch)
        (scratch / RECORD_FILE).write_text(json.dumps(record, indent=1, default=str))
        folder.mkdir(exist_ok=True)
        for item in scratch.iterdir():
            os.replace(item, folder / item.name)
    except WRITE_ERRORS as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ExplorerError(f"Could not write the pruned model to {folder}: {reason}. Nothing was saved there; "
                            "free some space or choose another folder.") from exc
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    return folder


def block_record(block: Block) -> dict:
    """A removed block as run.json records it."""
    return {"start": block.start, "n": block.n, "num_layers": block.num_layers, "removed": block.removed}


def save_model(loaded: LoadedModel, folder: str | Path, model_id: str, block: Block, record: dict,
               dtype: str | None = None) -> Path:
    """The one export of a pruned, repaired or healed model: its folder with run.json (`save_pruned`)
    plus the mergekit YAML of the unhealed slice, which rebuilds the pruned starting point from the
    original checkpoint."""
    out = save_pruned(loaded, folder, record, dtype)
    (out / "mergekit.yaml").write_text(mergekit_yaml(model_id, block.num_layers, block))
    return out


def save_prune(result, folder: str | Path, model_id: str, extra: dict, dtype: str | None = None) -> Path:
    """A pruned model (`prune.PruneResult`) saved with its run.json (block, parameter counts and
    `extra`) and the mergekit YAML: what the CLI's prune and the page's Save button write."""
    block, loaded = result.block, result.loaded
    record = {"kind": "prune", "model": model_id, "model_name": loaded.name, "fingerprint": loaded.fingerprint,
              "block": block_record(block), "params_before": result.params_before, "params_after": result.params_after,
              "dtype": dtype, **extra}
    return save_model(loaded, folder, model_id, block, record, dtype)


def heal_record(outcome, model_id: str, model_name: str) -> dict:
    """The run.json of a healed model (`heal.HealOutcome`), also the heal job's result."""
    return {
        "kind": "heal",
        "model": model_id,
        "model_name": model_name,
        "block": block_record(outcome.block),
        "params_before": outcome.params_before,
        "params_after": outcome.params_after,
        "heal": outcome.config.to_json(),
        "repair": outcome.repair or {"method": "none"},
        "metrics": {name: {k: v for k, v in m.items() if k not in ("kind", "step", "merged")} for name, m in outcome.metrics.items()},
    }


def kept_ranges(block: Block) -> list[tuple[int, int]]:
    """The kept layers as half-open [a, b) ranges, mergekit's `layer_range` convention."""
    ranges = [(0, block.start), (block.end, block.num_layers)] if block.n else [(0, block.num_layers)]
    return [(a, b) for a, b in ranges if b > a]


def _yaml_scalar(text: str) -> str:
    """Plain like mergekit's examples, quoted only when a path would otherwise not parse as one string."""
    plain = text and text == text.strip() and not set(text) & set(":#{}[],&*!|>'\"%@`") and text[0] not in "-?"
    return text if plain else json.dumps(text)


def mergekit_yaml(model_id: str, num_layers: int, block: Block, dtype: str = "bfloat16") -> str:
    """A mergekit `passthrough` config that stacks the kept slices of `model_id` (layout of
    mergekit's examples/orcamini-platy-44layer.yml). 'embedded' is written as its hub id."""
    if block.num_layers != num_layers:
        raise ExplorerError(f"Block is for a {block.num_layers}-layer model, not {num_layers} layers.")
    lines = [f"# Layer-Pruning Explorer: {model_id} without {block.describe()}."]
    if model_id == EMBEDDED:
        model_id = EMBEDDED_HUB_ID
        lines.append(f"# The embedded model is a GGUF of {EMBEDDED_HUB_ID}; mergekit reads the hub checkpoint.")
    lines.append("slices:")
    for a, b in kept_ranges(block):
        lines += ["  - sources:", f"    - model: {_yaml_scalar(model_id)}", f"      layer_range: [{a}, {b}]"]
    lines += ["merge_method: passthrough", f"dtype: {dtype}"]
    return "\n".join(lines) + "\n"

"""Write a model to a `save_pretrained` folder safely: weights in the chosen type, tokenizer and a
JSON record, all moved in only once complete. Healing saves its nf4 base through this too, so it
sits with model access, below everything that exports."""

from __future__ import annotations

import copy
import itertools
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

from explorer.core.errors import ExplorerError
from explorer.lm.layers import decoder_layers
from explorer.lm.models import WRITE_ERRORS, LoadedModel
from explorer.lm.sublayers import skipped, zero_sublayers

RECORD_FILE = "run.json"


def mergeable(model: nn.Module) -> nn.Module:
    """A plain transformers model: a peft model is merged on a copy, so a live adapter keeps training."""
    from peft import PeftModel  # deferred: peft loads only when healing or finetuning

    if isinstance(model, PeftModel):
        return copy.deepcopy(model).merge_and_unload()
    return model


def stock_form(model: nn.Module) -> nn.Module:
    """What is saved for `model`: itself, or, when sub-layers are skipped in memory, a copy sharing
    its weights in which each is its original module with zero weights (`sublayers.zero_sublayers`),
    which stock transformers loads and which gives the same logits."""
    if not any(skipped(decoder_layers(model)).values()):
        return model
    shared = {id(t): t for t in itertools.chain(model.parameters(), model.buffers())}
    saved = copy.deepcopy(model, shared)
    zero_sublayers(saved, decoder_layers(saved))
    return saved


DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}  # what a user picks -> torch's name


def _cast_state(model: nn.Module, dtype: str) -> dict:
    """The model's state dict with floating tensors in `dtype`, the model itself untouched.
    Tied tensors (embeddings and LM head) stay one tensor, so they are still saved once."""
    if dtype not in DTYPES:
        raise ExplorerError(f"Unknown weight type '{dtype}': choose one of {', '.join(DTYPES)}.")
    target, cast = getattr(torch, DTYPES[dtype]), {}
    return {name: cast.setdefault(t.data_ptr(), t.to(target)) if t.is_floating_point() else t
            for name, t in model.state_dict().items()}


def save_pruned(loaded: LoadedModel, folder: str | Path, record: dict, dtype: str | None = None,
                files: dict[str, str] | None = None) -> Path:
    """Write weights, config, tokenizer, the text `files` (name -> text) and `run.json` (the record)
    to `folder`; returns the folder. `dtype` ("fp32", "bf16", "fp16") saves the weights in that type
    (bf16 halves an fp32 model's size); None keeps the loaded type. run.json lists every file written
    ("files"), so deleting the run later deletes those and nothing else the folder holds.

    Everything is written to a scratch folder beside `folder` first and moved in once complete,
    so a full disk or a read-only folder leaves no half-written model that would fail to load
    later, and keeps whatever `folder` already held."""
    folder = Path(folder)
    model = stock_form(mergeable(loaded.model))
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
        for name, text in (files or {}).items():
            (scratch / name).write_text(text)
        written = sorted({item.name for item in scratch.iterdir()} | {RECORD_FILE})
        (scratch / RECORD_FILE).write_text(json.dumps({**record, "files": written}, indent=1, default=str))
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


def written_files(folder: Path) -> list[Path] | None:
    """The files `save_pruned` wrote into `folder` (from its run.json), those still there; None when
    run.json lists none (a folder saved before the list was kept: its files are not known)."""
    try:
        names = json.loads((folder / RECORD_FILE).read_text()).get("files")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(names, list):
        return None
    return [folder / name for name in names if isinstance(name, str) and "/" not in name and (folder / name).exists()]

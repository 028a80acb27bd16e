"""Text generation: the quickest look at what pruning, repair or healing did to a model."""

from __future__ import annotations

import torch

from explorer.core.concurrency import exclusive
from explorer.core.errors import ExplorerError
from explorer.lm.models import LoadedModel


def complete(loaded: LoadedModel, prompt: str, max_new_tokens: int = 24) -> str:
    """Greedy continuation of `prompt` (deterministic, so two models' answers compare)."""
    if not prompt.strip():
        raise ExplorerError("Give a prompt to complete.")
    inputs = loaded.tokenizer(prompt, return_tensors="pt").to(loaded.device)
    with exclusive(loaded.model), torch.no_grad():
        output = loaded.model.generate(
            **inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=loaded.tokenizer.pad_token_id
        )
    return loaded.tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)

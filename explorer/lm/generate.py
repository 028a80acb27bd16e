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


def greedy_continuations(loaded: LoadedModel, prompts: list[list[int]], new_tokens: int, batch_size: int = 8) -> list[list[int]]:
    """Each prompt's greedy continuation of `new_tokens` tokens (token ids, cut after the first EOS,
    which is kept so a model trained on them learns to stop), in the order given.

    Prompts of equal length share a batch, so no prompt is ever padded: left padding would shift
    positions in models that do not take position_ids, and the answer must not depend on which
    prompts happen to be batched together. One function on purpose: the batched generation engine
    (explorer.lm.generate's later engine) can replace its body without touching its callers."""
    if new_tokens < 1:
        raise ExplorerError(f"Generate at least one token (got {new_tokens}).")
    eos = loaded.tokenizer.eos_token_id
    pad = loaded.tokenizer.pad_token_id if loaded.tokenizer.pad_token_id is not None else eos
    by_length: dict[int, list[int]] = {}
    for index, prompt in enumerate(prompts):
        by_length.setdefault(len(prompt), []).append(index)
    out: list[list[int]] = [[] for _ in prompts]
    with exclusive(loaded.model), torch.no_grad():
        was_training = loaded.model.training
        loaded.model.eval()
        try:
            for length, indices in by_length.items():
                for start in range(0, len(indices), batch_size):
                    rows = indices[start:start + batch_size]
                    input_ids = torch.tensor([prompts[i] for i in rows], device=loaded.device)
                    generated = loaded.model.generate(
                        input_ids=input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=new_tokens,
                        min_new_tokens=0, do_sample=False, pad_token_id=pad, eos_token_id=eos,
                        temperature=None, top_p=None, top_k=None)
                    for row, tokens in zip(rows, generated[:, length:].tolist()):
                        out[row] = tokens[: tokens.index(eos) + 1] if eos in tokens else tokens
        finally:
            loaded.model.train(was_training)
    return out

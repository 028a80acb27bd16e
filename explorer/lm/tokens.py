"""Which token positions a recording pass keeps: the last real token of each sample (the paper's
distances) or every real one (the all-token metrics). The in-memory and the streamed passes
select through these same two functions, so both keep the same tokens."""

from __future__ import annotations

import torch

from explorer.core.errors import ExplorerError

TOKENS = ("last", "all")  # which tokens a recording pass keeps: the last real one of each sample, or every real one



def token_index(mask: torch.Tensor, tokens: str) -> torch.Tensor:
    """What `take_tokens` selects from a batch with attention `mask` [B, T]: each sample's last
    real position ("last") or the mask of every real token ("all")."""
    if tokens not in TOKENS:
        raise ExplorerError(f"Unknown token selection '{tokens}': choose {' or '.join(TOKENS)}.")
    return mask.sum(dim=1) - 1 if tokens == "last" else mask.bool()



def take_tokens(hidden: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """[B, T, H] hidden states -> float32 [B, H] (last tokens) or [real tokens, H] (every real
    token, sample after sample, so sample i's last token sits at cumsum(lengths)[i] - 1)."""
    index = index.to(hidden.device)
    if index.dtype == torch.bool:
        return hidden[index].float()
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), index].float()

"""How much each attention and each MLP sub-layer changes the residual stream, from one recording pass.

For layer l, x^l enters it, h^l leaves its attention (x^l + attention), x^(l+1) leaves its MLP
(h^l + MLP). Per sub-layer, the same two scores the whole-layer views use:

- angular distance, last real token of each sample, averaged over samples (the paper's metric,
  `similarity.angular_distance`): d(x^l, h^l) for the attention, d(h^l, x^(l+1)) for the MLP;
- Block Influence over every real token (ShortGPT, Men et al. 2403.03853): 1 - mean cos(x^l, h^l),
  1 - mean cos(h^l, x^(l+1)); LLM-Drop (He et al. 2406.15786) ranks sub-layers by exactly this
  (their "importance score"), and the attention-drop / mlp-drop strategies drop the lowest.

One forward per batch (`record.recorded_states` with `sublayers`) gives all 2L scores.
"""

from __future__ import annotations

from contextlib import closing
from dataclasses import asdict, dataclass

import torch

from explorer.analysis.similarity import Progress, angular_distance
from explorer.core.concurrency import exclusive
from explorer.core.errors import ExplorerError
from explorer.lm.models import LoadedModel
from explorer.lm.record import recorded_states


@dataclass
class SublayerScores:
    """Per-layer scores of its two sub-layers; index l is layer l. Lower = changes the stream less."""

    model: str
    num_layers: int
    samples: int
    tokens: int
    attention_distance: list[float]
    mlp_distance: list[float]
    attention_influence: list[float]
    mlp_influence: list[float]

    def influence(self, kind: str) -> list[float]:
        """Block Influence of every sub-layer of `kind` ("attention" or "mlp")."""
        return self.attention_influence if kind == "attention" else self.mlp_influence

    def distance(self, kind: str) -> list[float]:
        return self.attention_distance if kind == "attention" else self.mlp_distance

    def lowest(self, kind: str, k: int) -> tuple[int, ...]:
        """The k sub-layers of `kind` with the lowest Block Influence (ties: the shallower first)."""
        scores = self.influence(kind)
        return tuple(sorted(sorted(range(self.num_layers), key=lambda l: (scores[l], l))[:k]))

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "SublayerScores":
        return cls(**data)


@torch.no_grad()
def compute_sublayer_scores(loaded: LoadedModel, samples: list[list[int]], batch_size: int = 8,
                            progress: Progress | None = None) -> SublayerScores:
    """Angular distance (last token) and Block Influence (all tokens) of every attention and MLP
    sub-layer, from one in-memory all-token recording pass."""
    if not samples:
        raise ExplorerError("No calibration samples: give some text.")
    L = loaded.num_layers
    distance = torch.zeros(2 * L, dtype=torch.float64)  # [attention 0, MLP 0, attention 1, ...]
    cosine = torch.zeros(2 * L, dtype=torch.float64)
    done = tokens = 0
    with exclusive(loaded.model), closing(recorded_states(loaded, samples, batch_size, "all", progress, sublayers=True)) as passes:
        for states, mask in passes:  # states: [2L+1, real tokens, hidden]: x^0, h^0, x^1, ..., x^L
            last = (mask.sum(dim=1).cumsum(0) - 1).to(states.device)
            before, after = states[:-1], states[1:]
            distance += angular_distance(before[:, last], after[:, last]).sum(dim=1).double().cpu()
            cosine += torch.nn.functional.cosine_similarity(before.float(), after.float(), dim=-1).sum(dim=1).double().cpu()
            done += mask.shape[0]
            tokens += states.shape[1]
    distance, influence = (distance / done).tolist(), (1 - cosine / tokens).tolist()
    return SublayerScores(loaded.name, L, done, tokens, distance[0::2], distance[1::2], influence[0::2], influence[1::2])

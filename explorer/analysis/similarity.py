"""Angular distance between the residual stream entering layer l and entering layer l+n.

d(x^l, x^(l+n)) = arccos(cos_sim(x^l, x^(l+n))) / pi on the last real token of each sample,
averaged over samples (Gromov et al., 2403.17887, eq. 7). x^0 is the embedding output and
x^L the output of the last decoder layer before the final norm.

One forward pass per batch gives every (l, n): hooks keep only the last real token of each
layer's input/output ([batch, hidden] per layer, not [batch, tokens, hidden]), and all pairs
come from one Gram matrix of those L+1 vectors. Memory is independent of the sample count.
The base model runs without the LM head, which the distances never need.
"""

from __future__ import annotations

import math
from contextlib import closing
from dataclasses import asdict, dataclass
from typing import Callable, Iterator

import torch

from explorer.core.concurrency import exclusive
from explorer.core.errors import ExplorerError
from explorer.lm.blocks import Block, check_block, final_keeping_starts, simple_start
from explorer.lm.models import LanguageModel
from explorer.lm.tokens import token_index

Progress = Callable[[int, int], None]


@dataclass
class SimilarityResult:
    """distances[n-1][l] = d(x^l, x^(l+n)); row n-1 holds L-n+1 entries.

    `per_sample[s]` holds sample s's own distances in the same layout, so the bootstrap
    (explorer.analysis.bootstrap) resamples the calibration set without another forward pass; runs
    stored before it existed have none and show no intervals. `seq_len` and `source` record
    the calibration text the numbers came from (None on older runs).
    """

    model: str
    num_layers: int
    distances: list[list[float]]
    samples: int
    per_sample: list[list[list[float]]] | None = None
    seq_len: int | None = None
    source: str | None = None

    def best_block(self, n: int) -> Block:
        """The block the paper drops for n: the argmin of row n over the starts whose block keeps
        the final layer (the paper shows it must stay). Every view, the JSON and the "similarity"
        strategy use this one rule; ties go to the shallower start."""
        if not 0 < n < self.num_layers:
            raise ExplorerError(f"Cannot remove {n} of {self.num_layers} layers: at least one layer must remain.")
        row = self.distances[n - 1]
        return check_block(min(final_keeping_starts(n, self.num_layers), key=row.__getitem__), n, self.num_layers)

    @property
    def optimal(self) -> list[dict]:
        """`best_block(n)` for every prunable n (1..L-1) with its distance."""
        rows = []
        for n in range(1, self.num_layers):
            layer = self.best_block(n).start
            rows.append({"n": n, "layer": layer, "distance": self.distances[n - 1][layer]})
        return rows

    @property
    def unrestricted_minima(self) -> list[dict]:
        """Rows whose plain minimum is the block ending at the final layer, which `best_block`
        skips: shown apart so the heatmap says why that lower cell is not the chosen one."""
        rows = []
        for best in self.optimal:
            n, last_start = best["n"], self.num_layers - best["n"]
            distance = self.distances[n - 1][last_start]
            if distance < best["distance"]:
                rows.append({"n": n, "layer": last_start, "distance": distance})
        return rows

    @property
    def simple(self) -> list[dict]:
        """The baseline: drop the n deepest layers except the final one (`simple_start`)."""
        return [{"n": n, "layer": simple_start(n, self.num_layers)} for n in range(1, self.num_layers)]

    def to_json(self) -> dict:
        return {**asdict(self), "optimal": self.optimal, "unrestricted_minima": self.unrestricted_minima,
                "simple": self.simple}

    @classmethod
    def from_json(cls, data: dict) -> "SimilarityResult":
        """Also reads runs stored before per-sample data, seq_len and source were kept."""
        return cls(data["model"], data["num_layers"], data["distances"], data["samples"],
                   data.get("per_sample"), data.get("seq_len"), data.get("source"))


def angular_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """arccos(cos)/pi along the last dim, clamped so rounding never leaves [-1, 1]."""
    cos = torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1)
    return torch.arccos(cos.clamp(-1.0, 1.0)) / math.pi


def pairwise_angular(states: torch.Tensor) -> torch.Tensor:
    """[L+1, B, H] last-token states -> [B, L+1, L+1] angular distances between every pair."""
    unit = torch.nn.functional.normalize(states.float(), dim=-1).transpose(0, 1)
    cos = unit @ unit.transpose(1, 2)
    return torch.arccos(cos.clamp(-1.0, 1.0)) / math.pi


def residual_states(
    loaded: LanguageModel, samples: list[list[int]], batch_size: int, tokens: str = "last", progress: Progress | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The one recording pass behind every similarity metric: (states [L+1, selected tokens, H]
    of x^0..x^L, attention mask [B, T]) per batch, for the tokens chosen by `tokens` ("last" or
    "all"), from the model's `token_states` (a streamed model gives them layer by layer, never
    holding the whole model; `progress` then counts layers, not samples). The model is held
    (`exclusive`) until the pass is closed, so no other caller sees its hooks, even on an error."""
    if not samples:
        raise ExplorerError("No calibration samples: give some text.")
    token_index(torch.ones(1, 1), tokens)  # an unknown selection fails before any forward
    states_per_batch = loaded.token_states(samples, batch_size, tokens, progress)
    with exclusive(loaded.model), closing(states_per_batch):
        for states, mask in states_per_batch:
            if states.shape[0] != loaded.num_layers + 1:
                raise ExplorerError(f"Captured {states.shape[0]} states for {loaded.num_layers} layers; is the model pruned in place?")
            yield states, mask


@torch.no_grad()
def compute_distances(
    loaded: LanguageModel,
    samples: list[list[int]],
    batch_size: int = 8,
    progress: Progress | None = None,
) -> SimilarityResult:
    """Average d(x^l, x^(l+n)) over samples for every n in 1..L and l in 0..L-n, from the
    last-token `residual_states` pass (in memory or streamed)."""
    per_sample: list[torch.Tensor] = []  # [batch, L+1, L+1] each: small (S x 31 x 31 for 30 layers)
    done = 0
    with closing(residual_states(loaded, samples, batch_size, "last", progress)) as states_per_batch:
        for states, mask in states_per_batch:
            per_sample.append(pairwise_angular(states).double().cpu())
            done += mask.shape[0]
    matrices = torch.cat(per_sample)
    return SimilarityResult(loaded.name, loaded.num_layers, _rows(matrices.mean(dim=0)), done,
                            [_rows(matrix, PER_SAMPLE_DIGITS) for matrix in matrices])


PER_SAMPLE_DIGITS = 7  # per-sample values are stored rounded: a third of the JSON, far below any interval


def _rows(matrix: torch.Tensor, digits: int | None = None) -> list[list[float]]:
    """[L+1, L+1] pairwise distances -> rows[n-1][l] = matrix[l, l+n]."""
    if digits is not None:
        matrix = torch.round(matrix, decimals=digits)
    return [torch.diagonal(matrix, offset=n).tolist() for n in range(1, matrix.shape[0])]


def similarity_key(loaded: LanguageModel, samples_fingerprint: str) -> str:
    """Batch size is not part of the key: padding does not change the distances."""
    return f"{loaded.fingerprint}|{samples_fingerprint}"


def distances_key(loaded: LanguageModel, samples_fingerprint: str) -> str:
    """The store key of a similarity run: runs from before per-sample data was kept have the bare
    `similarity_key`, so they stay listed (same prefix) but a new request recomputes with it."""
    return f"{similarity_key(loaded, samples_fingerprint)}|per-sample"

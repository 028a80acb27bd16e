"""Which block would each pruning metric remove, and do the metrics agree?

Four scores for the block [l, l+n), lower = safer to drop, all from the same calibration text:

- last-token angular distance d(x^l, x^(l+n)) on the last real token (the paper's metric,
  `explorer.analysis.similarity`);
- all-token angular distance: the same, averaged over every real token (padding masked),
  pooled over the samples' tokens;
- Block Influence (ShortGPT, Men et al. 2403.03853): BI_i = 1 - mean over all real tokens of
  cos(x^i, x^(i+1)), the input and output of layer i. ShortGPT drops the n lowest-BI layers
  wherever they are (the block-influence strategy, explorer.analysis.strategies); to compare on
  the same candidates as the others we score a contiguous block by the SUM of its layers' BI,
  BI(l, n) = BI_l + ... + BI_(l+n-1);
- brute force (optional, costly): the measured validation-loss increase when [l, l+n) is
  removed, one prune + loss pass per l: the ground truth the cheap metrics try to predict.

The first three come from ONE forward pass per batch (`similarity.residual_states`, the pass the
heatmap uses, keeping every real token of x^0..x^L), and one Gram matrix per token gives all
(l, n) pairs and the adjacent-layer cosines; a streamed model works too.
Memory per batch is (L+1) x real tokens x hidden floats; lower the batch size for big models.
"""

from __future__ import annotations

from contextlib import closing
from dataclasses import asdict, dataclass

import numpy as np
import torch

from explorer.analysis.similarity import Progress, pairwise_angular, residual_states, similarity_key
from explorer.core.errors import ExplorerError
from explorer.evaluation.evaluate import validation_loss
from explorer.lm.blocks import check_block
from explorer.lm.data import make_samples
from explorer.lm.models import LoadedModel
from explorer.surgery.reuse import PrefixReuse

METRICS = {
    "last_token": "Angular distance, last token (paper)",
    "all_tokens": "Angular distance, all tokens",
    "block_influence": "Block Influence, summed (ShortGPT)",
    "brute_force": "Measured loss increase (brute force)",
}


@dataclass
class MetricScores:
    """Per-(l, n) scores of one calibration pass; rows are indexed like SimilarityResult.distances."""

    model: str
    num_layers: int
    samples: int
    tokens: int
    last_token: list[list[float]]  # [n-1][l] = d(x^l, x^(l+n)) on last tokens
    all_tokens: list[list[float]]  # [n-1][l], averaged over all real tokens
    layer_influence: list[float]  # BI_i for each layer i
    brute_force: dict | None = None  # {"n": n, "base_loss": .., "loss_increase": [per l]}

    def scores(self, n: int) -> dict[str, list[float]]:
        """Each metric's score for every start l in 0..L-n (lower = drop first)."""
        if not 1 <= n < self.num_layers:
            raise ExplorerError(f"Block size must be between 1 and {self.num_layers - 1} (got {n}).")
        starts = range(self.num_layers - n + 1)
        out = {
            "last_token": self.last_token[n - 1],
            "all_tokens": self.all_tokens[n - 1],
            "block_influence": [sum(self.layer_influence[l : l + n]) for l in starts],
        }
        if self.brute_force and self.brute_force["n"] == n:
            out["brute_force"] = self.brute_force["loss_increase"]
        return out

    def choices(self, n: int) -> dict[str, int]:
        """The block start each metric would prune: the argmin of its scores."""
        return {name: int(np.argmin(values)) for name, values in self.scores(n).items()}

    def rank_correlations(self, n: int) -> dict[str, dict[str, float]]:
        """Spearman correlation between every two metrics' rankings of l (a symmetric table)."""
        scores = self.scores(n)
        return {a: {b: spearman(scores[a], scores[b]) for b in scores} for a in scores}

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "MetricScores":
        return cls(**data)


def ranks(values: list[float]) -> np.ndarray:
    """1-based ranks, ties sharing their average rank (what Spearman's rho needs)."""
    array = np.asarray(values, dtype=float)
    order = np.argsort(array, kind="stable")
    sorted_values = array[order]
    result = np.empty(len(array))
    start = 0
    while start < len(array):
        end = start
        while end + 1 < len(array) and sorted_values[end + 1] == sorted_values[start]:
            end += 1
        result[order[start : end + 1]] = (start + end) / 2 + 1
        start = end + 1
    return result


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman's rho: the Pearson correlation of the ranks; NaN when either side is constant."""
    if len(a) != len(b):
        raise ValueError("Spearman needs two rankings of the same items.")
    ra, rb = ranks(a) - (len(a) + 1) / 2, ranks(b) - (len(b) + 1) / 2
    denominator = float(np.sqrt((ra * ra).sum() * (rb * rb).sum()))
    return float((ra * rb).sum() / denominator) if denominator > 0 else float("nan")


@torch.no_grad()
def compute_scores(
    loaded: LoadedModel,
    samples: list[list[int]],
    batch_size: int = 8,
    progress: Progress | None = None,
) -> MetricScores:
    """Last-token and all-token angular distances and per-layer Block Influence from one
    all-token `residual_states` pass (in memory or streamed)."""
    num_layers = loaded.num_layers
    last_total = torch.zeros(num_layers + 1, num_layers + 1, dtype=torch.float64)
    token_total = torch.zeros_like(last_total)
    cos_total = torch.zeros(num_layers, dtype=torch.float64)
    done = tokens = 0
    with closing(residual_states(loaded, samples, batch_size, "all", progress)) as states_per_batch:
        for states, mask in states_per_batch:  # states: [L+1, real tokens, hidden]
            last = mask.sum(dim=1).cumsum(0) - 1
            last_total += pairwise_angular(states[:, last.to(states.device)]).sum(dim=0).double().cpu()
            token_total += pairwise_angular(states).sum(dim=0).double().cpu()
            cos_total += torch.nn.functional.cosine_similarity(states[:-1], states[1:], dim=-1).sum(dim=1).double().cpu()
            done += mask.shape[0]
            tokens += states.shape[1]
    last_mean, token_mean = last_total / done, token_total / tokens

    def rows(mean: torch.Tensor) -> list[list[float]]:
        return [[float(mean[l, l + n]) for l in range(num_layers - n + 1)] for n in range(1, num_layers + 1)]

    influence = [float(1 - c / tokens) for c in cos_total]
    return MetricScores(loaded.name, num_layers, done, tokens, rows(last_mean), rows(token_mean), influence)


def brute_force_losses(
    loaded: LoadedModel,
    n: int,
    source: str,
    samples: int,
    seq_len: int,
    batch_size: int = 8,
    progress: Progress | None = None,
) -> dict:
    """Held-out loss with each block [l, l+n) removed, minus the unpruned loss: L-n+1 prunes.

    Blocks that include the final layer are measured too (the other metrics score them). The
    unpruned loss pass is recorded once (`reuse.PrefixReuse`) and each block runs only the layers
    after it, on a pruned view sharing the weights: `loaded` stays whole and nothing is copied."""
    if not 1 <= n < loaded.num_layers:
        raise ExplorerError(f"Block size must be between 1 and {loaded.num_layers - 1} (got {n}).")
    starts = range(loaded.num_layers - n + 1)
    reuse = PrefixReuse(loaded, set(starts), lambda model: {"loss": validation_loss(model, source, samples, seq_len, batch_size)})
    base = reuse.base["loss"]
    increases = []
    for start in starts:
        increases.append(reuse.measure(check_block(start, n, loaded.num_layers, allow_final=True))["loss"] - base)
        if progress:
            progress(start + 1, len(starts))
    return {"n": n, "base_loss": base, "loss_increase": increases}


def brute_force_key(loaded: LoadedModel, n: int, source: str, samples: int, seq_len: int) -> str:
    """Model weights, held-out samples and n: what a brute-force measurement depends on."""
    heldout = make_samples(loaded.tokenizer, source, samples, seq_len, "heldout")
    return f"{similarity_key(loaded, heldout.fingerprint)}|n={n}"

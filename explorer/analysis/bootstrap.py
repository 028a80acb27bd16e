"""How much the distances and the chosen block move with the calibration data.

The bootstrap resamples the calibration samples with replacement (B draws, seeded) and
re-averages each sample's own distances, which `compute_distances` keeps, so it needs no
new forward pass: B x S x L^2/2 multiply-adds, milliseconds for 200 draws of 64 samples of
a 30-layer model. Each draw gives a full distance table, hence a percentile interval for
every d(x^l, x^(l+n)) and, for each n, the start `SimilarityResult.best_block` would choose
on that draw: the fraction of draws choosing each start is its "stability".

Pure functions of a `SimilarityResult`; results without per-sample data (runs stored
before it was kept) give None, and every view then shows no intervals.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from explorer.analysis.similarity import SimilarityResult
from explorer.lm.blocks import Block, final_keeping_starts

DRAWS = 200
SEED = 0
LEVEL = 0.95
STABLE_FROM = 0.8  # a choice made in fewer draws than this is flagged as unstable
SHALLOW_BELOW = 0.25  # l* in the first quarter of the layers is flagged as shallow


@dataclass
class Bootstrap:
    """Intervals laid out like `SimilarityResult.distances`; stability[n-1][l] for n in 1..L-1
    and every start l whose block keeps the final layer (each row sums to 1)."""

    draws: int
    seed: int
    level: float
    ci_low: list[list[float]]
    ci_high: list[list[float]]
    stability: list[list[float]]

    def runner_up(self, n: int, layer: int) -> tuple[int, float] | None:
        """(start, fraction of draws) of the most chosen start other than `layer`, None if none was."""
        others = [(l, f) for l, f in enumerate(self.stability[n - 1]) if l != layer and f > 0]
        return min(others, key=lambda item: (-item[1], item[0]), default=None)

    def hover_line(self, n: int, layer: int) -> str:
        """e.g. 'chosen in 63% of 200 resamples; runner-up layer 3 in 30%'."""
        line = f"chosen in {share(self.stability[n - 1][layer])} of {self.draws} resamples"
        if runner := self.runner_up(n, layer):
            line += f"; runner-up layer {runner[0]} in {share(runner[1])}"
        return line

    def to_json(self) -> dict:
        return {"draws": self.draws, "seed": self.seed, "level": self.level, "ci_low": self.ci_low,
                "ci_high": self.ci_high, "stability": self.stability}


def share(fraction: float) -> str:
    """A percentage that never rounds a real but rare outcome to 0% or a near-certain one to 100%."""
    text = f"{fraction:.0%}"
    return f"{fraction:.1%}" if text in ("0%", "100%") and 0 < fraction < 1 else text


def dense(result: SimilarityResult) -> np.ndarray:
    """Per-sample rows as one [S, L, L+1] array, NaN where a row is shorter (l > L - n)."""
    L = result.num_layers
    out = np.full((len(result.per_sample), L, L + 1), np.nan)
    for s, rows in enumerate(result.per_sample):
        for n, row in enumerate(rows, 1):
            out[s, n - 1, : len(row)] = row
    return out


def resampled_means(per_sample: np.ndarray, draws: int, seed: int) -> np.ndarray:
    """[S, ...] per-sample values -> [draws, ...] means over samples drawn with replacement."""
    samples = per_sample.shape[0]
    counts = np.random.default_rng(seed).multinomial(samples, np.full(samples, 1 / samples), size=draws)
    flat = per_sample.reshape(samples, -1)
    return (counts @ np.nan_to_num(flat) / samples).reshape(draws, *per_sample.shape[1:])


def chosen_starts(means: np.ndarray, num_layers: int) -> np.ndarray:
    """[draws, L, L+1] tables -> [draws, L-1] restricted argmin per n (first on ties, like best_block)."""
    return np.stack(
        [np.argmin(means[:, n - 1, final_keeping_starts(n, num_layers)], axis=1) for n in range(1, num_layers)], axis=1
    )


def _rows(table: np.ndarray, num_layers: int) -> list[list[float]]:
    return [table[n - 1, : num_layers - n + 1].tolist() for n in range(1, num_layers + 1)]


def bootstrap(result: SimilarityResult, draws: int = DRAWS, seed: int = SEED, level: float = LEVEL) -> Bootstrap | None:
    """Percentile intervals for every distance and the choice frequencies; None without per-sample data."""
    if not result.per_sample or draws < 1:
        return None
    L = result.num_layers
    means = resampled_means(dense(result), draws, seed)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail], axis=0)
    starts = chosen_starts(means, L)
    stability = [
        (np.bincount(starts[:, n - 1], minlength=len(final_keeping_starts(n, L))) / draws).tolist()
        for n in range(1, L)
    ]
    return Bootstrap(draws, seed, level, _rows(low, L), _rows(high, L), stability)


def optimal_with_uncertainty(result: SimilarityResult, boot: Bootstrap | None) -> list[dict]:
    """`result.optimal`, each entry with its stability, its distance's interval and the runner-up
    start (the next most chosen, or None) when a bootstrap exists."""
    if boot is None:
        return result.optimal
    rows = []
    for entry in result.optimal:
        n, layer = entry["n"], entry["layer"]
        runner = boot.runner_up(n, layer)
        rows.append({
            **entry,
            "stability": boot.stability[n - 1][layer],
            "distance_ci": [boot.ci_low[n - 1][layer], boot.ci_high[n - 1][layer]],
            "runner_up": {"layer": runner[0], "stability": runner[1]} if runner else None,
        })
    return rows


def result_json(result: SimilarityResult, boot: Bootstrap | None) -> dict:
    """What `similarity --out` writes: the result, "optimal" with uncertainty, and the intervals."""
    return {**result.to_json(), "optimal": optimal_with_uncertainty(result, boot),
            "bootstrap": boot.to_json() if boot else None}


def is_shallow(layer: int, num_layers: int) -> bool:
    return layer < SHALLOW_BELOW * num_layers


def choice_notes(result: SimilarityResult, boot: Bootstrap | None, n: int) -> list[str]:
    """Plain-words warnings about the chosen block for n: unstable across resamples, shallow."""
    block = result.best_block(n)
    notes = []
    if boot is not None:
        if boot.stability[n - 1][block.start] < STABLE_FROM:
            notes.append(f"Unstable choice: when the calibration samples are resampled, the best block for n = {n} "
                         f"(from layer {block.start}) is {boot.hover_line(n, block.start)}. "
                         "More or longer samples would pin it down.")
    if is_shallow(block.start, result.num_layers):
        notes.append(f"Shallow choice: for n = {n} the most redundant block starts at layer {block.start}, in the first "
                     f"quarter of the {result.num_layers} layers; in the paper's large models it sits deep in the network.")
    return notes


def block_notes(result: SimilarityResult, boot: Bootstrap | None, block: Block) -> list[str]:
    """Every warning about a picked block: the best-block notes for its n, and removing the final
    layer, which the paper keeps (so pruning it needs the explicit override)."""
    notes = choice_notes(result, boot, block.n) if block.n < result.num_layers else []
    if block.includes_final:
        notes.append(f"This block removes the final layer {result.num_layers - 1}; the paper keeps it, "
                     "and pruning it needs the explicit override.")
    return notes


def selection_text(result: SimilarityResult, boot: Bootstrap | None, block: Block, removed_params: int) -> str:
    """The picked block in one line: what it removes and its distance, with the interval when known."""
    start, n = block.start, block.n
    interval = f" [{boot.ci_low[n - 1][start]:.4f}, {boot.ci_high[n - 1][start]:.4f}]" if boot else ""
    return (f"Selected: remove {block.describe(removed_params)} · angular distance "
            f"{result.distances[n - 1][start]:.4f}{interval}")


def summary(result: SimilarityResult, boot: Bootstrap | None) -> str:
    """One sentence over all n: how many choices are shallow, and how many unstable."""
    optimal = result.optimal
    shallow = sum(is_shallow(e["layer"], result.num_layers) for e in optimal)
    text = f"{shallow} of {len(optimal)} block sizes have a shallow best block (first quarter of the layers)"
    if boot is None and result.per_sample:
        return text + ". No bootstrap resamples were asked for (--bootstrap 0), so the distances have no intervals."
    if boot is None:
        return text + ". This run was stored before per-sample distances were kept: run it again for intervals."
    unstable = sum(boot.stability[e["n"] - 1][e["layer"]] < STABLE_FROM for e in optimal)
    return text + f"; {unstable} are unstable (chosen in under {STABLE_FROM:.0%} of {boot.draws} resamples of the samples)."

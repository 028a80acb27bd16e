"""Training-free repair of a pruned block: one linear map folded into the layer before it.

ReplaceMe (Shopkhoev et al., arXiv 2505.02819) replaces a removed block [start, start+n) by a
linear map T estimated from calibration activations. With i = start - 1 the last kept layer
before the block, M the output of layer i's MLP down-projection, Y the residual stream
leaving layer i and L the residual stream entering layer start+n (for a block that ends the
stack: leaving the last layer, before the final norm), the block turned Y into L. Layer i's
output is Y = (Y - M) + M, so replacing its MLP output M by M T gives (Y - M) + M T, and T solves

    min_T  sum_t ||m_t T - (l_t - y_t + m_t)||^2 / ||l_t||^2  +  lambda ||T||^2

over all real tokens t of the calibration text: least squares on each token's error relative to
its residual-stream norm. Why relative: plain least squares is dominated by the attention-sink
token, whose residual stream is ~100x larger than the others' (SmolLM2: |l| 23,000 against 200
to 330); when the massive activation is created inside the block, plain least squares spends T
on recreating it and damages every other token (embedded model, layers 10-18 removed: held-out
loss 6.40 pruned, 7.93 after a plain fit, 5.24 after the relative fit). The weighting keeps the
closed form and, like ReplaceMe's cosine objective, makes every token count alike. The (weighted) normal equations need only MᵀM and Mᵀ(target)
(d x d each, d the hidden size), accumulated in float64 batch by batch, so memory does not grow
with the samples. T then folds into the down-projection (W_down -> W_down composed with T, the
bias too), so the repaired model is a stock transformers model with L - n layers.

Folding needs a down-projection whose output reaches the residual stream unchanged: layer 0
has no kept layer before it, gemma2/gemma3 normalize the MLP output (post-feedforward norm)
and post-LN OPT normalizes the sum, a mixture of experts has no single down-projection; those
are refused with one sentence (no unfolded form would export as a stock model either).

The ridge: lambda = ridge * trace(MᵀM) / d, i.e. relative to the mean eigenvalue of MᵀM, so
the same setting means the same thing for every model scale and calibration size. At the
default 1e-4 it leaves every direction carrying more than 1/10,000 of the average energy
untouched and only damps the near-null directions a small calibration set cannot determine.
Measured on the embedded model (64 x 128-token documents, 8,011 tokens for d = 576): the held-out
residual is the same from ridge 0 to 1e-3 (0.623 for layers 20-22, 0.589 for 10-18) and under 1%
lower at 0.1, so the ridge is there to keep few-token fits solvable, not as a tuning knob.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass

import torch
from torch import nn

from explorer.core.errors import ExplorerError
from explorer.core.options import setting
from explorer.lm.blocks import Block, LayerSet, check_block
from explorer.lm.data import EMBEDDED, batches, check_settings, make_samples, pad_batch, source_fingerprint
from explorer.lm.forward import inference
from explorer.lm.layers import decoder_layers, parameter_count, pruned_view
from explorer.lm.models import LoadedModel
from explorer.surgery.prune import PruneResult, prune_block, prune_layers

REPAIRS = ("none", "linear")  # what --repair, the sweep setting and its page radio offer (a LoRA heal is separate)
# Where each family keeps the MLP's last projection, relative to a decoder layer.
DOWN_PROJECTIONS = ("mlp.down_proj", "mlp.fc2", "mlp.c_proj", "mlp.dense_4h_to_h", "fc2")
# A norm applied to the MLP output before the residual add (gemma2, gemma3): T cannot pass through it.
POST_MLP_NORMS = ("post_feedforward_layernorm", "post_mlp_layernorm")


@dataclass(frozen=True)
class RepairConfig:
    """How the linear map is fitted: calibration text (train split), held-out text for the residual."""

    source: str = setting(EMBEDDED, "calibration text: 'embedded', 'c4' or a .txt/.jsonl/.parquet file")
    samples: int = setting(64, "calibration documents (train split)")
    heldout_samples: int = setting(16, "held-out documents for the fit's relative residual")
    seq_len: int = setting(128, "tokens per document")
    batch_size: int = setting(8, "documents per forward pass")
    ridge: float = setting(1e-4, "linear repair's ridge, relative to trace(MᵀM)/d")  # lambda = ridge * trace(MᵀM) / d

    def check(self) -> None:
        check_settings(self.samples, self.seq_len, self.batch_size)
        check_settings(self.heldout_samples, self.seq_len, self.batch_size)
        if not (self.ridge >= 0 and math.isfinite(self.ridge)):
            raise ExplorerError(f"The ridge must be a finite number >= 0 (got {self.ridge}).")

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class FitStats:
    """Sufficient statistics of a least-squares fit M T ≈ target, in float64."""

    mtm: torch.Tensor  # MᵀM (d x d)
    mty: torch.Tensor  # Mᵀ target (d x d)
    yty: float  # ||target||² (for residuals without keeping the activations)
    mm: float  # ||M||², ||M - target||² = mm - 2 tr(mty) + yty is the unrepaired residual
    tokens: int

    def residual(self, transform: torch.Tensor) -> float:
        """||M T - target|| / ||target||, from the statistics alone."""
        err = (transform * (self.mtm @ transform)).sum() - 2 * (transform * self.mty).sum() + self.yty
        return math.sqrt(max(float(err), 0.0) / self.yty) if self.yty > 0 else 0.0


@dataclass
class LinearFit:
    """The fitted map and how well it generalizes to held-out text."""

    transform: torch.Tensor  # T (d x d, float64): M -> M T
    layer: int  # the layer whose down-projection T folds into (block.start - 1)
    ridge_lambda: float
    train_tokens: int
    heldout_tokens: int
    heldout_residual: float  # ||M T - target|| / ||target|| on held-out activations (tokens weighted by 1/|l|)
    heldout_residual_unrepaired: float  # the same for T = I (the block simply removed)
    seconds: float

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "transform"}


def down_projection(model: nn.Module, index: int) -> nn.Module:
    """Layer `index`'s MLP down-projection, or an ExplorerError saying why T cannot fold there."""
    config = model.config.get_text_config(decoder=True)
    family = getattr(config, "model_type", type(model).__name__)
    layer = decoder_layers(model)[index]
    if any(hasattr(layer, name) for name in POST_MLP_NORMS):
        raise ExplorerError(
            f"Linear repair cannot fold into a {family} model: its MLP output passes a post-feedforward norm "
            "before the residual add, so no weight change reproduces the map; use a LoRA heal instead."
        )
    if getattr(config, "do_layer_norm_before", True) is False:
        raise ExplorerError(
            f"Linear repair cannot fold into this post-LayerNorm {family} model: the norm after the residual "
            "add mixes the MLP output with the rest of the stream; use a LoRA heal instead."
        )
    for path in DOWN_PROJECTIONS:
        try:
            module = layer.get_submodule(path)
        except AttributeError:
            continue
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.Tensor) or not weight.is_floating_point() or hasattr(weight, "quant_state"):
            raise ExplorerError(
                f"Linear repair needs full-precision weights to fold into ({path} of layer {index} is quantized): "
                "load the model without 4-bit."
            )
        return module
    raise ExplorerError(
        f"Linear repair cannot fold into a {family} model: its layers have no MLP down-projection "
        f"(looked for {', '.join(DOWN_PROJECTIONS)}); use a LoRA heal instead."
    )


def check_repairable(loaded: LoadedModel, block: Block) -> nn.Module:
    """The down-projection T folds into, checked before any activation is collected."""
    if block.start == 0:
        raise ExplorerError(
            f"Linear repair needs a kept layer before the block, but {block.describe()} starts at layer 0: "
            "choose a block starting at layer 1 or later, or use a LoRA heal."
        )
    return down_projection(loaded.model, block.start - 1)


class _Stop(Exception):
    """Raised by the last hook: the layers after the block are not needed for the fit."""


def _hidden(output) -> torch.Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


def collect_stats(loaded: LoadedModel, blocks: list[Block], ids: list[list[int]], batch_size: int) -> list[FitStats]:
    """For each block: MᵀM, Mᵀ(L - Y + M) and the norms over every real token of `ids`, each
    token's row divided by its |l| (the relative objective of the module docstring).

    Hooks capture M (the down-projection's output in layer start-1), Y (that layer's output)
    and L (the output of layer start+n-1) of every block in one forward pass, which stops after
    the deepest of them: a sweep fitting many blocks pays one pass over the calibration text, not
    one a block. Float64 sums keep the normal equations accurate over tens of thousands of tokens."""
    downs = {block.start - 1: check_repairable(loaded, block) for block in blocks}
    layers = decoder_layers(loaded.model)
    down = next(iter(downs.values()))
    d = down.weight.shape[1] if type(down).__name__ == "Conv1D" else down.weight.shape[0]
    sums = [FitStats(torch.zeros(d, d, dtype=torch.float64), torch.zeros(d, d, dtype=torch.float64), 0.0, 0.0, 0)
            for _ in blocks]
    last = max(block.end - 1 for block in blocks)
    seen: dict[tuple[str, int], torch.Tensor] = {}

    def keep(key: tuple[str, int], stop: bool = False):
        def hook(module, args, output):
            seen[key] = _hidden(output)
            if stop:
                raise _Stop

        return hook

    outputs = set(downs) | {block.end - 1 for block in blocks}  # Y of some blocks, L of others: a layer's output
    handles = [module.register_forward_hook(keep(("m", i))) for i, module in downs.items()]
    handles += [layers[i].register_forward_hook(keep(("out", i), stop=i == last)) for i in outputs]
    try:
        with inference(loaded.model):
            for chunk in batches(ids, batch_size):
                input_ids, mask = pad_batch(chunk, loaded.tokenizer.pad_token_id or 0)
                seen.clear()
                try:
                    loaded.model(input_ids=input_ids.to(loaded.device), attention_mask=mask.to(loaded.device), use_cache=False)
                except _Stop:
                    pass
                real = mask.bool()
                rows = {key: value[real.to(value.device)].to("cpu", torch.float64) for key, value in seen.items()}
                for block, stats in zip(blocks, sums):
                    _accumulate(stats, block, rows[("m", block.start - 1)], rows[("out", block.start - 1)],
                                rows[("out", block.end - 1)])
    finally:
        for handle in handles:
            handle.remove()
    return sums


def _accumulate(stats: FitStats, block: Block, m: torch.Tensor, y: torch.Tensor, l: torch.Tensor) -> None:
    """Add one batch's real tokens (float64 rows) to a block's sums."""
    if not (torch.isfinite(m).all() and torch.isfinite(y).all() and torch.isfinite(l).all()):
        raise ExplorerError(
            f"The activations around {block.describe()} are not finite (NaN or inf): the model's weights or "
            "precision are broken for this text; nothing was repaired."
        )
    scale = l.norm(dim=1, keepdim=True).clamp_min(1e-12)
    target = (l - y + m) / scale
    m = m / scale
    stats.mtm += m.T @ m
    stats.mty += m.T @ target
    stats.yty += float((target * target).sum())
    stats.mm += float((m * m).sum())
    stats.tokens += m.shape[0]


def solve(stats: FitStats, ridge: float) -> tuple[torch.Tensor, float]:
    """T = (MᵀM + lambda I)⁻¹ Mᵀ(target) by Cholesky, lambda = ridge * trace(MᵀM) / d."""
    d = stats.mtm.shape[0]
    if stats.tokens < d:
        raise ExplorerError(
            f"The linear fit is singular: it needs at least {d} calibration tokens (the hidden size) and got "
            f"{stats.tokens}: use more samples or a longer sequence length."
        )
    lam = ridge * float(torch.trace(stats.mtm)) / d
    factor, info = torch.linalg.cholesky_ex(stats.mtm + lam * torch.eye(d, dtype=torch.float64))
    if int(info) != 0:
        raise ExplorerError(
            f"The linear fit is singular (the MLP outputs span fewer than {d} directions on {stats.tokens} tokens): "
            "use more or more varied calibration text, or a ridge above 0."
        )
    return torch.cholesky_solve(stats.mty, factor), lam


def fold(down: nn.Module, transform: torch.Tensor) -> None:
    """Make `down` output (its old output) @ T, in place: W -> Tᵀ W for nn.Linear (weight
    out x in), W -> W T for GPT-2's Conv1D (weight in x out), bias b -> b T."""
    weight = down.weight
    w = weight.detach().to(torch.float64)
    t = transform.to(w.device)
    with torch.no_grad():
        weight.copy_((w @ t if type(down).__name__ == "Conv1D" else t.T @ w).to(weight.dtype))
        if getattr(down, "bias", None) is not None:
            down.bias.copy_((down.bias.detach().to(torch.float64) @ t).to(down.bias.dtype))


def fold_private(model: nn.Module, layer: int, transform: torch.Tensor) -> None:
    """fold() into fresh copies of layer `layer`'s down-projection parameters: a model whose
    weights are shared with another (the sweep's pruned views) changes alone."""
    down = down_projection(model, layer)
    for name in ("weight", "bias"):
        if isinstance(param := getattr(down, name, None), nn.Parameter):
            setattr(down, name, nn.Parameter(param.detach().clone(), requires_grad=param.requires_grad))
    fold(down, transform)


def fit_blocks(loaded: LoadedModel, blocks: list[Block], config: RepairConfig) -> list[LinearFit]:
    """Fit T for each block on the unpruned model: calibration text to fit, held-out text to score
    it, one forward pass over each for all the blocks (`collect_stats`). Each fit's `seconds` is
    an equal share of the time they took together."""
    config.check()
    if not blocks:
        return []
    started = time.perf_counter()
    for block in blocks:
        check_repairable(loaded, block)
    train = make_samples(loaded.tokenizer, config.source, config.samples, config.seq_len, split="train").ids
    d = loaded.model.config.get_text_config(decoder=True).hidden_size
    if (count := sum(len(x) for x in train)) < d:  # before the forward pass: it cannot succeed
        raise ExplorerError(
            f"The linear fit is singular: it needs at least {d} calibration tokens (the hidden size) and the text "
            f"gave {count}: use more samples or a longer sequence length."
        )
    fitted = [solve(stats, config.ridge) + (stats.tokens,) for stats in collect_stats(loaded, blocks, train, config.batch_size)]
    heldout = make_samples(loaded.tokenizer, config.source, config.heldout_samples, config.seq_len, split="heldout").ids
    tests = collect_stats(loaded, blocks, heldout, config.batch_size)
    share = (time.perf_counter() - started) / max(len(blocks), 1)
    return [
        LinearFit(transform, block.start - 1, lam, tokens, test.tokens, test.residual(transform), _unrepaired(test), share)
        for block, (transform, lam, tokens), test in zip(blocks, fitted, tests)
    ]


def _unrepaired(test: FitStats) -> float:
    """||M - target|| / ||target||: the residual of T = I, the block simply removed."""
    return math.sqrt(max(test.mm - 2 * float(torch.trace(test.mty)) + test.yty, 0.0) / test.yty) if test.yty else 0.0


def fit_block(loaded: LoadedModel, block: Block, config: RepairConfig) -> LinearFit:
    """`fit_blocks` for one block."""
    return fit_blocks(loaded, [block], config)[0]


def repair_block(
    loaded: LoadedModel, start: int, n: int, config: RepairConfig, allow_final: bool = False, inplace: bool = False
) -> tuple[PruneResult, LinearFit | None]:
    """Prune [start, start+n) and fold the fitted map into layer start-1: a stock model with L - n
    layers. The fit runs on the unpruned weights first, so any failure leaves the model untouched.
    n = 0 removes nothing and fits nothing (None)."""
    block = check_block(start, n, loaded.num_layers, allow_final)
    fit = fit_block(loaded, block, config) if n else None
    result = prune_block(loaded, start, n, allow_final=allow_final, inplace=inplace)
    if fit is not None:
        fold(down_projection(result.loaded.model, fit.layer), fit.transform)
        _name_repaired(result.loaded, config)
    return result, fit


def _name_repaired(repaired: LoadedModel, config: RepairConfig) -> None:
    """Rename and re-fingerprint a model whose block was repaired (the caches key it by this)."""
    repaired.name += " (linear repair)"
    settings = json.dumps({**config.to_json(), "source": source_fingerprint(config.source)}, sort_keys=True)
    repaired.fingerprint += f"|linear:{hashlib.sha1(settings.encode()).hexdigest()[:12]}"


def prune_or_repair(loaded: LoadedModel, block: LayerSet, config: RepairConfig | None, inplace: bool = False,
                    share: bool = False) -> tuple[PruneResult, LinearFit | None]:
    """The set removed, and repaired when a linear repair is asked for (`config`; one contiguous
    block only: the map replaces one run of layers): the one way the CLI's prune and a heal's start
    turn a chosen set into a model. `share`: a `pruned_view` sharing `loaded`'s weights, which stays
    whole (a distillation teacher), the map folded into a private copy of its one down-projection."""
    if config is not None and not block.contiguous:
        raise ExplorerError(f"A linear repair replaces one contiguous block; {block.describe()} is not one: "
                            "prune it without repair.")
    if share:
        view = pruned_view(loaded, block)
        fit = fit_block(loaded, block, config) if config is not None and block.n else None
        if fit is not None:
            fold_private(view.model, fit.layer, fit.transform)
            _name_repaired(view, config)
        return PruneResult(view, block, parameter_count(loaded.model), parameter_count(view.model)), fit
    if config is None:
        return prune_layers(loaded, block, inplace=inplace), None
    return repair_block(loaded, block.start, block.n, config, allow_final=block.includes_final, inplace=inplace)


def repair_record(config: RepairConfig, fit: LinearFit | None) -> dict:
    """What run.json keeps about a linear repair: the method, the calibration text and the fit's residual."""
    return {"method": "linear", "calibration": config.to_json(), "fit": fit.to_json() if fit else None}

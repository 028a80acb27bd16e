"""Sweep cost per point: one model load per sweep against re-loading the model for every point.

A sweep point is "get the pruned model" + "measure it" (held-out loss + task accuracy with
`explorer.experiments.sweep.eval_config`). The measurement is the same whichever way the pruned model was
obtained, so the benchmark times the two parts separately, for the "simple" block of each n:
  (a) ours: `prune.pruned_view` on the model loaded once (module tree copied, weights shared);
  (b) reload: `load_model` + `prune_block(inplace=True)` per point, what a script looping over
      `python -m explorer prune` / `eval` pays;
  (c) for reference, `prune_block` on a deep copy (one load, but a weight copy per point);
  (e) the measurement itself, once per point (on (a)'s model).
Preparation arms are interleaved (who goes first rotates) for `--repeats` rounds and their
medians reported; (a) and (b) must give identical logits. Per-point totals are prep + (e).
Goal: one model load per sweep, i.e. total (b)/(a) > 1; the saving per point is
the model's load time, which for a hub or GGUF model is far larger than here.
"""

from __future__ import annotations

import argparse
import statistics
import sys

import torch

from benchmarks import arguments, environment, report, timed
from explorer.analysis.strategies import Context, choose_layers
from explorer.evaluation.evaluate import quick_eval
from explorer.experiments.sweep import SweepSettings, eval_config, parse_fractions
from explorer.lm.blocks import Block
from explorer.lm.layers import parameter_count, pruned_view
from explorer.lm.models import LoadedModel, load_model
from explorer.surgery.prune import prune_block

ARMS = {
    "a": "pruned view of the model loaded once (ours)",
    "b": "load the model again + prune in place",
    "c": "deep copy + prune (one load, weights copied)",
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = arguments("sweep", __doc__)
    parser.add_argument("--fractions", default="0,0.1,0.2,0.3", help="fractions of layers dropped, one point each")
    parser.add_argument("--task", default="", help="default: the sweep's default task")
    parser.add_argument("--limit", type=int, default=16, help="questions per point")
    parser.add_argument("--val-samples", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3, help="rounds of the preparation arms")
    return parser.parse_args(argv)


@torch.no_grad()
def _logits(loaded: LoadedModel, ids: torch.Tensor) -> torch.Tensor:
    return loaded.model(input_ids=ids.to(loaded.device), use_cache=False).logits.float().cpu()


def measure(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = SweepSettings(
        model=args.model, device=args.device, strategies=("simple",), fractions=parse_fractions(args.fractions),
        task=args.task, limit=args.limit, val_samples=args.val_samples, seq_len=args.seq_len, batch_size=args.batch_size,
    )
    settings.check()
    load_s, _, loaded = timed(lambda: load_model(settings.model, device=settings.device))
    num_layers = loaded.num_layers
    blocks = [choose_layers("simple", n, Context(num_layers)) for n in settings.block_sizes(num_layers)]
    probe = torch.tensor([loaded.tokenizer("The capital of France is Paris, and the capital of Spain is")["input_ids"]])

    def reload(block: Block) -> LoadedModel:
        fresh = load_model(settings.model, device=settings.device)
        return prune_block(fresh, block.start, block.n, inplace=True).loaded

    arms = {
        "a": lambda block: pruned_view(loaded, block),
        "b": reload,
        "c": lambda block: prune_block(loaded, block.start, block.n).loaded,
    }
    prep: dict[str, list[float]] = {key: [] for key in arms}
    identical = True
    for repeat in range(args.repeats):
        order = "abc"[repeat % 3:] + "abc"[: repeat % 3]
        for block in blocks:
            models = {}
            for key in order:
                seconds, _, models[key] = timed(lambda: arms[key](block))
                prep[key].append(seconds)
            if repeat == 0:
                identical = identical and torch.equal(_logits(models["a"], probe), _logits(models["b"], probe))
            del models
        print(f"  round {repeat + 1}: " + ", ".join(f"({k}) {statistics.median(v):.2f} s" for k, v in prep.items()),
              file=sys.stderr, flush=True)
    config = eval_config(settings)
    evaluation = []
    for block in blocks:
        seconds, _, _ = timed(lambda: quick_eval(pruned_view(loaded, block), config))
        evaluation.append(seconds)
        print(f"  (e) n={block.n}: {seconds:.2f} s", file=sys.stderr, flush=True)
    median = {key: statistics.median(values) for key, values in prep.items()}
    eval_s = statistics.median(evaluation)
    per_point = {key: median[key] + eval_s for key in arms}
    return {
        "model": loaded.name,
        "num_layers": num_layers,
        **environment(loaded.device),
        "task": settings.task,
        "limit": settings.limit,
        "block_sizes": [block.n for block in blocks],
        "val_samples": settings.val_samples,
        "seq_len": settings.seq_len,
        "first_load_s": load_s,
        "prepare_s": prep,
        "prepare_median_s": median,
        "evaluate_s": evaluation,
        "seconds_per_point": per_point,
        "ratio_b_over_a": per_point["b"] / per_point["a"],
        "prepare_ratio_b_over_a": median["b"] / median["a"],
        "weight_bytes_copied_per_point": {"a": 0, "b": 0, "c": sum(p.numel() * p.element_size() for p in loaded.model.parameters())},
        "parameters": parameter_count(loaded.model),
        "identical_logits_a_b": identical,
    }


def table(result: dict) -> str:
    median, per_point = result["prepare_median_s"], result["seconds_per_point"]
    lines = [
        f"{result['model']} ({result['num_layers']} layers), n = {result['block_sizes']}, measurement: "
        f"{result['task']} x {result['limit']} questions + loss on {result['val_samples']} x {result['seq_len']} tokens, "
        f"{result['device']} ({result['torch_threads']} threads)",
        "",
        "| arm | prepare s (median) | + measure s | s per point | weights copied |",
        "|---|---:|---:|---:|---:|",
    ]
    measure_s = statistics.median(result["evaluate_s"])
    for key, label in ARMS.items():
        copied = result["weight_bytes_copied_per_point"][key] / 2**20
        lines.append(f"| ({key}) {label} | {median[key]:.3f} | {measure_s:.2f} | {per_point[key]:.2f} | {copied:.0f} MiB |")
    lines += ["", f"per point (b)/(a) = {result['ratio_b_over_a']:.2f}, preparation alone (b)/(a) = "
              f"{result['prepare_ratio_b_over_a']:.0f}x (goal > 1); identical logits (a) vs (b): {result['identical_logits_a_b']}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    result = measure(args)
    return report(result, args.out, table)

"""What each strategy's selection costs, what prefix reuse saves iterative-loss, and what skipping
sub-layers saves a forward pass, on one model in one process.

  selection: the seconds each strategy takes to choose, from nothing (its needs computed here,
    not fetched from the store), on the calibration text; as a ratio to one plain forward pass
    over the same samples (the cheapest thing any data-driven strategy must do). iterative-loss's
    whole order takes hours on a shared CPU: its first steps are timed under "reuse", and a
    sweep stores the whole order's seconds in its "selection" run.
  iterative-loss reuse: the scores of its first `--steps` steps measured two ways, each candidate
    running only the layers after it (`reuse.PrefixReuse`, what the strategy does) and each
    candidate's pruned model run whole (the obvious baseline); the scores are checked equal.
  sub-layer skipping: forward passes of the model with a quarter / half of its attention (MLP)
    sub-layers skipped in memory, against the same model saved in stock form (those sub-layers
    present with zero weights, `save.stock_form`), whose logits are checked equal; interleaved,
    median of `--repeats`.
"""

from __future__ import annotations

import argparse
import statistics
import sys

import torch

from benchmarks import arguments, environment, report, timed
from explorer.analysis.metrics import compute_scores
from explorer.analysis.similarity import compute_distances
from explorer.analysis.strategies import STRATEGIES, Context, IterativeLoss, choose_layers
from explorer.analysis.sublayers import compute_sublayer_scores
from explorer.evaluation.evaluate import token_loss
from explorer.lm.blocks import LayerSet
from explorer.lm.data import make_samples
from explorer.lm.forward import inference
from explorer.lm.layers import pruned_view
from explorer.lm.models import LoadedModel, load_model
from explorer.lm.save import stock_form


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = arguments("strategies", __doc__)
    parser.add_argument("--source", default="embedded")
    parser.add_argument("--samples", type=int, default=16, help="calibration samples (the teaching sweep's)")
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=2, help="iterative-loss steps timed with and without reuse")
    parser.add_argument("--repeats", type=int, default=5, help="timed forward passes per sub-layer variant")
    parser.add_argument("--parts", default="selection,reuse,sublayers", help="parts to run (comma-separated)")
    return parser.parse_args(argv)


def selection_seconds(loaded: LoadedModel, ids: list[list[int]], batch_size: int) -> dict[str, dict]:
    """Each strategy's choice for n = L/4 from nothing: its needs computed, then `choose`."""
    L = loaded.num_layers
    with inference(loaded.model):
        forward, _, _ = timed(lambda: list(loaded.logits_batches(ids, batch_size)))
    needs = {
        "similarity": lambda: Context(L, similarity=compute_distances(loaded, ids, batch_size)),
        "simple": lambda: Context(L),
        "top-cut": lambda: Context(L),
        "block-influence": lambda: Context(L, influence=compute_scores(loaded, ids, batch_size).layer_influence),
        "attention-drop": lambda: Context(L, sublayers=compute_sublayer_scores(loaded, ids, batch_size)),
        "mlp-drop": lambda: Context(L, sublayers=compute_sublayer_scores(loaded, ids, batch_size)),
    }
    needs["iterative-angular"] = lambda: Context(
        L, orders={"iterative-angular": STRATEGIES["iterative-angular"].removal_order(loaded, ids, batch_size)})
    rows = {}
    for name in needs:
        seconds, cpu, block = timed(lambda: choose_layers(name, L // 4, needs[name]()))
        rows[name] = {"seconds": seconds, "cpu_seconds": cpu, "per_forward": seconds / forward, "chosen": block.span}
        print(f"{name}: {seconds:.1f} s ({block.span})", file=sys.stderr, flush=True)
    return {"forward_seconds": forward, "strategies": rows}


def reuse_ratio(loaded: LoadedModel, ids: list[list[int]], batch_size: int, steps: int) -> dict:
    """iterative-loss's first steps with prefix reuse against whole pruned models, scores checked equal."""
    L, removed = loaded.num_layers, []
    reused = whole = 0.0
    for _ in range(steps):
        current = pruned_view(loaded, LayerSet(tuple(removed), L)) if removed else loaded
        size = current.num_layers
        seconds, _, fast = timed(lambda: IterativeLoss().step_scores(current, ids, batch_size))
        reused += seconds
        seconds, _, slow = timed(lambda: [token_loss(pruned_view(current, LayerSet((p,), size)), ids, batch_size)[0]
                                          for p in range(size - 1)])
        whole += seconds
        torch.testing.assert_close(torch.tensor(fast), torch.tensor(slow), atol=1e-4, rtol=1e-5)
        kept = [i for i in range(L) if i not in removed]
        removed.append(kept[min(range(len(fast)), key=lambda p: (fast[p], p))])
    return {"steps": steps, "reuse_seconds": reused, "whole_seconds": whole, "speedup": whole / reused}


def sublayer_speed(loaded: LoadedModel, ids: list[list[int]], batch_size: int, repeats: int) -> list[dict]:
    """Forward seconds of attention / MLP drops (a quarter, a half) skipped in memory vs their stock form."""
    L = loaded.num_layers
    scores = compute_sublayer_scores(loaded, ids, batch_size)
    batch = torch.tensor([ids[0]] * batch_size, device=loaded.device)
    rows = []
    for kind in ("attention", "mlp"):
        for share in (0.25, 0.5):
            k = round(share * L)
            view = pruned_view(loaded, LayerSet((), L, **{kind: scores.lowest(kind, k)}))
            stock = stock_form(view.model)
            with torch.no_grad():
                torch.testing.assert_close(view.model(batch).logits, stock(batch).logits, atol=0, rtol=0)
                times = {"unpruned": [], "skipped": [], "stock": []}
                for _ in range(repeats):  # interleaved: load from other processes hits all three alike
                    for name, model in (("unpruned", loaded.model), ("skipped", view.model), ("stock", stock)):
                        times[name].append(timed(lambda: model(batch, use_cache=False))[0])
            median = {name: statistics.median(values) for name, values in times.items()}
            rows.append({"kind": kind, "share": share, "k": k, **{f"{n}_seconds": v for n, v in median.items()},
                         "skipped_vs_stock": median["stock"] / median["skipped"],
                         "skipped_vs_unpruned": median["unpruned"] / median["skipped"]})
    return rows


def table(result: dict) -> str:
    lines = []
    if "selection" in result:
        forward = result["selection"]["forward_seconds"]
        lines += [f"One forward pass over the calibration samples: {forward:.2f} s", "",
                  "| strategy | selection (s) | in forward passes | chosen for n = L/4 |", "|---|---|---|---|"]
        lines += [f"| {name} | {row['seconds']:.1f} | {row['per_forward']:.0f} | {row['chosen']} |"
                  for name, row in result["selection"]["strategies"].items()]
    if "reuse" in result:
        r = result["reuse"]
        lines += ["", f"iterative-loss, first {r['steps']} steps: {r['reuse_seconds']:.1f} s with prefix reuse, "
                  f"{r['whole_seconds']:.1f} s with whole pruned models: {r['speedup']:.2f}x (scores equal); "
                  f"{r['reuse_seconds'] / r['steps'] / result.get('selection', {}).get('forward_seconds', float('nan')):.0f} "
                  "forward passes a step"]
    if "sublayers" in result:
        lines += ["", "| dropped | unpruned (s) | skipped in memory (s) | stock form, zeroed (s) | skipped vs stock |",
                  "|---|---|---|---|---|"]
        lines += [f"| {row['k']} {row['kind']} ({row['share']:.0%}) | {row['unpruned_seconds']:.3f} | "
                  f"{row['skipped_seconds']:.3f} | {row['stock_seconds']:.3f} | {row['skipped_vs_stock']:.2f}x |"
                  for row in result["sublayers"]]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_model(args.model, device=args.device)
    ids = make_samples(loaded.tokenizer, args.source, args.samples, args.seq_len).ids
    parts = set(args.parts.split(","))
    result = {"model": loaded.name, "samples": args.samples, "seq_len": args.seq_len, "batch_size": args.batch_size}
    if "selection" in parts:
        result["selection"] = selection_seconds(loaded, ids, args.batch_size)
    if "reuse" in parts:
        result["reuse"] = reuse_ratio(loaded, ids, args.batch_size, args.steps)
    if "sublayers" in parts:
        result["sublayers"] = sublayer_speed(loaded, ids, args.batch_size, args.repeats)
    result["environment"] = environment(loaded.device)
    return report(result, args.out, table)

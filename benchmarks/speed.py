"""What pruning buys on this machine: decode speedup of the embedded model without n layers, against
the ideal L / (L - n).

In one process (explorer.evaluation.speed.measure_speed): the unpruned model and its pruned views
(the `simple` block of each n: the n deepest layers before the last; for speed only n matters),
each checked against its normal forward, then timed interleaved on the same prompts, the order
reversed every repeat, the fastest of the repeats compared. Goal (issue 22): at batch 1 and n = 8,
measured speedup >= 0.85 x the ideal 30/22. The decode step's parts (before the first layer, the
layers, after the last: final norm, LM head, argmax) are timed too: they say how much of the gap
is the LM head and the per-step fixed work, which removing layers does not touch.

`--sizes 4,8,12,16 --batch-sizes 1,8` gives the README table (every n against the same unpruned
model in the one run).
"""

from __future__ import annotations

import argparse
import subprocess
import sys

import torch

from benchmarks import arguments, environment, report
from explorer.core.threads import configure
from explorer.evaluation.speed import SpeedSettings, measure_speed, parse_sizes
from explorer.lm.blocks import simple_start
from explorer.lm.models import load_model

GOAL = 0.85  # measured / ideal decode speedup at batch 1 for n = 8 (issue 22)
GOAL_N = 8


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = arguments("speed", __doc__)
    parser.add_argument("--sizes", default="8", help="comma-separated numbers of layers to remove (each against the unpruned model)")
    parser.add_argument("--batch-sizes", default="1", help="comma-separated batch sizes")
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    return parser.parse_args(argv)


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def measure(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    else:
        configure("cli")  # EXPLORER_TORCH_THREADS, else every core: what `python -m explorer speed` runs with
    loaded = load_model(args.model, device=args.device)
    layers = loaded.num_layers
    settings = SpeedSettings(args.prompt_tokens, args.new_tokens, parse_sizes(args.batch_sizes), args.repeats)
    models = {"n=0": loaded.model}
    for n in parse_sizes(args.sizes):
        models[f"n={n}"] = loaded.pruned(simple_start(n, layers), n).model
    before = uptime()
    result = measure_speed(models, settings, lambda text: print(f"  {text}", file=sys.stderr, flush=True))
    goal = result["comparisons"].get(f"n={GOAL_N}", {}).get("decode_vs_ideal", {}).get("1")
    return {"model": loaded.name, "num_layers": layers, **environment(loaded.device), "uptime_before": before,
            "uptime_after": uptime(), "goal": {"n": GOAL_N, "batch": 1, "measured_over_ideal": goal, "target": GOAL,
                                               "met": None if goal is None else goal >= GOAL}, **result}


def table(result: dict) -> str:
    """The README table: per n the ideal, measured prefill and decode speedups per batch, and memory."""
    batches = result["settings"]["batch_sizes"]
    first = "1" if 1 in batches else str(batches[0])
    head = ["n", "ideal L/(L-n)", *[f"prefill ×, b={b}" for b in batches], *[f"decode ×, b={b}" for b in batches],
            f"decode ÷ ideal, b={first}", f"decode × in CPU time, b={first}", "bound from fixed costs",
            "weights MB", "KV kB/token", f"peak MB (b={max(batches)})"]
    lines = [f"{result['model']}, {result['device']} ({result['dtype']}), {result['torch_threads']} torch threads, "
             f"prompt {result['settings']['prompt_tokens']} tokens, {result['settings']['new_tokens']} decode steps, "
             f"fastest of {result['settings']['repeats']} interleaved repeats", "",
             "| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    for label, figures in result["models"].items():
        compared = result["comparisons"].get(label)
        memory = figures["memory"]
        peak = memory["peak_bytes"] / 2**20 if memory["peak_bytes"] is not None else float("nan")
        if compared is None:
            cells = [label.removeprefix("n="), "1.00", *["1.00"] * (2 * len(batches)), "—", "—", "—"]
        else:
            cells = [label.removeprefix("n="), f"{compared['ideal']:.2f}",
                     *[f"{compared['prefill'][str(b)]['min']:.2f}" for b in batches],
                     *[f"{compared['decode'][str(b)]['min']:.2f}" for b in batches],
                     f"{compared['decode_vs_ideal'][first]:.2f}", f"{compared['decode_cpu'][first]['min']:.2f}",
                     f"{compared['bound_with_fixed_costs']:.2f}"]
        cells += [f"{memory['weights_bytes'] / 2**20:.0f}", f"{figures['kv_bytes_per_token'] / 1024:.1f}", f"{peak:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    parts = result["models"]["n=0"]["decode_parts_ms"]
    lines += ["", f"unpruned decode step (batch 1): {parts['step']:.1f} ms = {parts['before_layers']:.1f} before the layers "
              f"(embedding, masks, rotary, Python) + {parts['layers']:.1f} in the {result['num_layers']} layers + "
              f"{parts['after_layers']:.1f} after them (final norm, LM head, argmax)"]
    goal = result["goal"]
    if goal["measured_over_ideal"] is not None:
        lines.append(f"goal: n = {goal['n']}, batch 1: measured ÷ ideal {goal['measured_over_ideal']:.2f} "
                     f"(target ≥ {goal['target']}): {'met' if goal['met'] else 'MISSED'}")
    lines += [f"before: {result['uptime_before']}", f"after:  {result['uptime_after']}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    return report(measure(args), args.out, table)

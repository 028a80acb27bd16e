"""Repair without training against a LoRA heal: how much of the pruning damage each recovers, and at what cost.

On the embedded model, for the similarity block at each n (default 3, 6, 9), in one process:
  L_unpruned, L_pruned: held-out loss (validation_loss: held-out documents, never fitted on)
  linear: explorer.surgery.repair.repair_block with RepairConfig's defaults (fit + fold), timed
  lora:   a LoRA heal of HealConfig's default length (training_model + train_adapter + merge,
          its periodic evaluations off so only the repair itself is timed), timed
and reports the fraction of the damage recovered, (L_pruned - L_repaired) / (L_pruned - L_unpruned):
1 = back to the unpruned loss, 0 = no better than the pruned model, negative = worse.
"""

from __future__ import annotations

import argparse
import sys

import torch

from benchmarks import arguments, environment, report, timed
from explorer.analysis.strategies import Context, choose_layers
from explorer.evaluation.evaluate import validation_loss
from explorer.lm.models import LoadedModel, load_model
from explorer.state.cache import cached_distances
from explorer.surgery.heal import HealConfig, merge, train_adapter, training_batches, training_model
from explorer.surgery.prune import prune_block
from explorer.surgery.repair import RepairConfig, repair_block


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = arguments("repair", __doc__)
    parser.add_argument("--sizes", default="3,6,9", help="comma-separated block sizes n")
    parser.add_argument("--val-samples", type=int, default=32, help="held-out documents for the loss")
    parser.add_argument("--seq-len", type=int, default=128)
    return parser.parse_args(argv)


def lora_heal(pruned: LoadedModel, config: HealConfig) -> LoadedModel:
    """The heal's training and merge, without its evaluations."""
    data = training_batches(pruned, config)
    peft_model = training_model(pruned, config)
    train_adapter(peft_model, data, config)
    return LoadedModel(merge(peft_model, pruned), pruned.tokenizer, pruned.name, pruned.fingerprint)


def measure(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_model(args.model, device=args.device)
    loss = lambda model: validation_loss(model, samples=args.val_samples, seq_len=args.seq_len)  # noqa: E731
    _, similarity, _ = cached_distances(loaded, "embedded", 32, args.seq_len, 8)
    unpruned = loss(loaded)
    heal_config = HealConfig(quantize=False).resolved(loaded.device)
    repair_config = RepairConfig()
    rows = []
    for n in (int(x) for x in args.sizes.split(",")):
        block = choose_layers("similarity", n, Context(loaded.num_layers, similarity))
        pruned = prune_block(loaded, block.start, block.n)
        pruned_loss = loss(pruned.loaded)
        linear_s, linear_cpu, (repaired, fit) = timed(lambda: repair_block(loaded, block.start, block.n, repair_config))
        linear_loss = loss(repaired.loaded)
        del repaired
        lora_s, lora_cpu, healed = timed(lambda: lora_heal(pruned.loaded, heal_config))
        lora_loss = loss(healed)
        del healed
        damage = pruned_loss - unpruned
        row = {
            "n": n, "block": block.describe(), "pruned_loss": pruned_loss,
            "linear_loss": linear_loss, "linear_recovered": (pruned_loss - linear_loss) / damage, "linear_s": linear_s,
            "linear_cpu_s": linear_cpu,
            "heldout_residual": fit.heldout_residual, "heldout_residual_unrepaired": fit.heldout_residual_unrepaired,
            "lora_loss": lora_loss, "lora_recovered": (pruned_loss - lora_loss) / damage, "lora_s": lora_s,
            "lora_cpu_s": lora_cpu,
        }
        print(f"  n={n}: {row}", file=sys.stderr, flush=True)
        rows.append(row)
    return {
        "model": loaded.name, "unpruned_loss": unpruned, "rows": rows,
        "repair": repair_config.to_json(), "heal": {k: heal_config.to_json()[k] for k in ("steps", "batch_size", "seq_len", "rank", "lr")},
        "val_samples": args.val_samples, "seq_len": args.seq_len, **environment(loaded.device),
    }


def table(result: dict) -> str:
    heal = result["heal"]
    lines = [
        f"{result['model']}, similarity block, held-out loss on {result['val_samples']} documents x {result['seq_len']} tokens "
        f"(unpruned {result['unpruned_loss']:.3f}); linear: {result['repair']['samples']} calibration documents x "
        f"{result['repair']['seq_len']} tokens; LoRA: {heal['steps']} steps of {heal['batch_size']} x {heal['seq_len']} tokens, "
        f"rank {heal['rank']}; {result['device']}, {result['torch_threads']} threads, load average after "
        + ", ".join(f"{x:.1f}" for x in result["load_average_after"]),
        "",
        "| n | block | pruned loss | linear: loss | recovered | wall (CPU) time | LoRA heal: loss | recovered | wall (CPU) time |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['n']} | {r['block'].split(' (')[0]} | {r['pruned_loss']:.3f} | {r['linear_loss']:.3f} | {r['linear_recovered']:.0%} | "
            f"{r['linear_s']:.0f} s ({r['linear_cpu_s']:.0f} s) | {r['lora_loss']:.3f} | {r['lora_recovered']:.0%} | "
            f"{r['lora_s']:.0f} s ({r['lora_cpu_s']:.0f} s) |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    return report(measure(args), args.out, table)

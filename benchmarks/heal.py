"""Healing throughput: our LoRA loop against a plain peft loop, and fp32 LoRA against QLoRA.

In one process, on the same pruned model and the same padded batches, it times:
  (a) ours: `explorer.surgery.heal.training_model` + `train_adapter` (schedule, NaN/OOM guards,
      per-step events and cancel checks; evaluations off),
  (b) a plain peft loop written here: `get_peft_model` with the same LoraConfig on a copy of
      the pruned model, then forward(labels) / backward / AdamW.step / zero_grad,
  (q) ours with QLoRA (bitsandbytes nf4 base, bf16 compute), for the fp32-vs-4-bit figure.
Each arm builds fresh adapters from the same seed and runs the same `--steps` batches;
(a) and (b) alternate for `--repeats` rounds (who goes first rotates) so load from other
processes hits both alike, and the median tokens/s (real, unpadded tokens over the training
steps only) is reported. Goal: (a)/(b) >= 1.0.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from dataclasses import replace

import torch

from benchmarks import arguments, environment, report
from explorer.analysis.strategies import Context, choose_layers
from explorer.lm.models import LoadedModel, load_model
from explorer.surgery.heal import HealConfig, lora_targets, train_adapter, training_batches, training_model
from explorer.surgery.prune import prune_block

ARMS = {"a": "ours (training_model + train_adapter)", "b": "plain peft loop", "q": "ours, QLoRA (nf4 base)"}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = arguments("heal", __doc__)
    parser.add_argument("--n", type=int, default=None, help="layers pruned first (default: a quarter, simple strategy)")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--qlora-repeats", type=int, default=1, help="timed QLoRA runs; 0 skips it")
    return parser.parse_args(argv)


def ours(pruned: LoadedModel, config: HealConfig, data: list) -> float:
    """Tokens/s as our loop reports it in its last train event."""
    events: list[dict] = []
    peft_model = training_model(pruned, config)
    train_adapter(peft_model, data, config, events.append)
    return events[-1]["tokens_per_s"]


def plain_peft(pruned: LoadedModel, config: HealConfig, data: list) -> float:
    """The loop a peft tutorial writes, timed the same way (training steps only)."""
    from peft import LoraConfig, get_peft_model

    base = copy.deepcopy(pruned.model)
    base.config.use_cache = False
    torch.manual_seed(config.seed)
    lora = LoraConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout,
                      target_modules=lora_targets(base), bias="none", task_type="CAUSAL_LM")
    model = get_peft_model(base, lora)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.lr, weight_decay=0.0)
    device = pruned.device
    model.train()
    tokens, seconds = 0, 0.0
    for input_ids, mask, labels in data:
        started = time.perf_counter()
        loss = model(input_ids=input_ids.to(device), attention_mask=mask.to(device), labels=labels.to(device)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds += time.perf_counter() - started
        tokens += int(mask.sum())
    return tokens / seconds


def measure(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_model(args.model, device=args.device)
    n = args.n if args.n is not None else loaded.num_layers // 4
    block = choose_layers("simple", n, Context(loaded.num_layers))
    pruned = prune_block(loaded, block.start, block.n, inplace=True).loaded
    config = HealConfig(steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len, rank=args.rank,
                        alpha=2 * args.rank, eval_every=args.steps, quantize=False).resolved(pruned.device)
    data = training_batches(pruned, config)
    arms = {"a": lambda: ours(pruned, config, data), "b": lambda: plain_peft(pruned, config, data),
            "q": lambda: ours(pruned, replace(config, quantize=True), data)}
    ours(pruned, replace(config, steps=1, eval_every=1), data[:1])  # warm-up: first-call allocations and kernel choice
    plain_peft(pruned, replace(config, steps=1, eval_every=1), data[:1])
    rates: dict[str, list[float]] = {key: [] for key in ARMS}
    for repeat in range(args.repeats):
        for key in ("ab" if repeat % 2 == 0 else "ba"):
            rates[key].append(arms[key]())
            print(f"  ({key}) run {len(rates[key])}: {rates[key][-1]:.0f} tokens/s", file=sys.stderr, flush=True)
    for _ in range(args.qlora_repeats):
        rates["q"].append(arms["q"]())
        print(f"  (q) run {len(rates['q'])}: {rates['q'][-1]:.0f} tokens/s", file=sys.stderr, flush=True)
    median = {key: statistics.median(r) for key, r in rates.items() if r}
    ratios = {"a/b": median["a"] / median["b"]}
    if "q" in median:
        ratios["q/a"] = median["q"] / median["a"]
    return {
        "model": loaded.name,
        "pruned": block.describe(),
        **environment(pruned.device),
        "steps": args.steps,
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "rank": args.rank,
        "tokens_per_run": sum(int(b[1].sum()) for b in data),
        "tokens_per_s": rates,
        "median_tokens_per_s": median,
        "ratios": ratios,
        "goal_a_over_b": 1.0,
    }


def table(result: dict) -> str:
    median = result["median_tokens_per_s"]
    lines = [
        f"{result['model']} without {result['pruned']}, {result['steps']} steps of {result['batch_size']} x "
        f"{result['seq_len']} tokens, LoRA rank {result['rank']}, {result['device']} ({result['torch_threads']} threads)",
        "",
        "| arm | median tokens/s | runs | relative to (b) |",
        "|---|---:|---:|---:|",
    ]
    for key, label in ARMS.items():
        if key in median:
            lines.append(f"| ({key}) {label} | {median[key]:.0f} | {len(result['tokens_per_s'][key])} | {median[key] / median['b']:.2f} |")
    lines.append("")
    lines.append(" ".join(f"{name} = {value:.3f}" for name, value in result["ratios"].items()) + " (goal a/b >= 1.0)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    result = measure(args)
    return report(result, args.out, table)

"""Busy machine: one heal step of the embedded model beside a CPU-busy torch process, with torch's
default threads (every process takes every core) against explorer/threads.py's policy.

In one process, on the same pruned model, adapters and batches, it times LoRA training steps
(`explorer.surgery.heal.train_step`) while a neighbour process multiplies matrices in a loop (what
the server computing a heatmap, or any other torch process, does to a running job):
  (idle)   no neighbour, torch's default threads: the reference,
  (before) neighbour and heal step both with torch's default threads (one per core),
  (after)  the policy: the heal step with the job runner's threads, the neighbour with the
           server's (`threads.threads_for`).
Rounds alternate before/after (who goes first rotates) so other load hits both alike; the
median seconds per step is reported with the 1-minute load average (`uptime`) at each round.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

import torch

from benchmarks import arguments, environment, report, timed
from explorer.analysis.strategies import Context, choose_layers
from explorer.core.threads import cores, threads_for
from explorer.lm.models import load_model
from explorer.surgery.heal import HealConfig, train_step, training_batches, training_model
from explorer.surgery.prune import prune_block

NEIGHBOUR = """
import sys, torch
torch.set_num_threads(int(sys.argv[1]))
a = torch.randn(1024, 1024)
print("ready", flush=True)
while True:
    a = torch.tanh(a @ a)
"""


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = arguments("threads", __doc__)
    parser.add_argument("--steps", type=int, default=3, help="timed heal steps per round")
    parser.add_argument("--repeats", type=int, default=2, help="rounds of each arm")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=128)
    return parser.parse_args(argv)


def neighbour(threads: int) -> subprocess.Popen:
    """A torch process keeping `threads` threads busy until killed."""
    process = subprocess.Popen([sys.executable, "-c", NEIGHBOUR, str(threads)], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "ready"
    return process


def timed_steps(peft_model, optimizer, data: list, threads: int) -> list[float]:
    """Seconds of each heal step with `threads` torch threads in this process."""
    torch.set_num_threads(threads)
    device = peft_model.get_input_embeddings().weight.device
    seconds = []
    for step, batch in enumerate(data, 1):
        seconds.append(timed(lambda: train_step(peft_model, optimizer, batch, 1e-4, step, device))[0])
    return seconds


def measure(args: argparse.Namespace) -> dict:
    default = cores()  # torch's own choice without OMP_NUM_THREADS: one thread per core
    loaded = load_model(args.model, device="cpu")
    block = choose_layers("simple", loaded.num_layers // 4, Context(loaded.num_layers))
    pruned = prune_block(loaded, block.start, block.n, inplace=True).loaded
    config = HealConfig(steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len, quantize=False).resolved("cpu")
    data = training_batches(pruned, config)
    peft_model = training_model(pruned, config)
    peft_model.train()
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-4)
    timed_steps(peft_model, optimizer, data[:1], default)  # warm-up: first-call allocations
    arms = {"before": (default, default), "after": (threads_for("runner", environ={}), threads_for("server", environ={}))}
    seconds: dict[str, list[float]] = {"idle": timed_steps(peft_model, optimizer, data, default), "before": [], "after": []}
    loads: dict[str, list[float]] = {"idle": [os.getloadavg()[0]], "before": [], "after": []}
    for repeat in range(args.repeats):
        for arm in (("before", "after") if repeat % 2 == 0 else ("after", "before")):
            heal_threads, other_threads = arms[arm]
            busy = neighbour(other_threads)
            try:
                time.sleep(1.0)  # let the neighbour's threads spin up
                seconds[arm] += timed_steps(peft_model, optimizer, data, heal_threads)
                loads[arm].append(os.getloadavg()[0])
            finally:
                busy.kill()
                busy.wait()
            print(f"  ({arm}) round {repeat + 1}: median {statistics.median(seconds[arm]):.2f} s/step, "
                  f"load {loads[arm][-1]:.1f}", file=sys.stderr, flush=True)
    median = {arm: statistics.median(s) for arm, s in seconds.items()}
    return {
        "model": loaded.name,
        "pruned": block.describe(),
        "cores": cores(),
        "threads": {"default": default, "after_heal": arms["after"][0], "after_neighbour": arms["after"][1]},
        **environment("cpu"),
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "seconds_per_step": seconds,
        "median_seconds_per_step": median,
        "load_average_1min": loads,
        "uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
        "ratios": {"before/after": median["before"] / median["after"], "after/idle": median["after"] / median["idle"]},
    }


def table(result: dict) -> str:
    median, loads, t = result["median_seconds_per_step"], result["load_average_1min"], result["threads"]
    rows = {"idle": f"no neighbour, {t['default']} threads",
            "before": f"neighbour; heal {t['default']} threads, neighbour {t['default']} (torch default)",
            "after": f"neighbour; heal {t['after_heal']} threads, neighbour {t['after_neighbour']} (explorer/threads.py)"}
    lines = [f"{result['model']} without {result['pruned']}, heal step of {result['batch_size']} x {result['seq_len']} tokens, "
             f"{result['cores']} cores", "", "| arm | median s/step | steps | load (1 min) |", "|---|---:|---:|---:|"]
    for arm, label in rows.items():
        lines.append(f"| ({arm}) {label} | {median[arm]:.2f} | {len(result['seconds_per_step'][arm])} | "
                     f"{', '.join(f'{x:.1f}' for x in loads[arm])} |")
    lines += ["", " ".join(f"{name} = {value:.2f}" for name, value in result["ratios"].items()), result["uptime"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    return report(measure(args), args.out, table)

"""Sweeps end to end, with points reusing the unpruned forward against measuring each pruned model whole.

Two sweeps, each run both ways in one process on the model loaded once, every run on a fresh
store (so each computes its own similarity heatmap, as a first sweep does):
  teaching: `sweep --teaching` (two strategies, every third n, 64 quiz questions a point, each
  point also after a linear repair, whose fit runs on the unpruned model either way);
  three strategies: the same with top-cut added.
"whole" is the path before issue 14 (`run_sweep(..., reuse=False)`: every point runs its whole
pruned model); "reuse" records the unpruned evaluation once and runs only each block's later
layers (`explorer.surgery.reuse.PrefixReuse`). Points must be equal (accuracy exactly, loss within 1e-5).
Goal from issue 14: >= 3x faster end to end. The profile columns split the points' time into
recording, model preparation, held-out loss, task scoring, linear fits and bookkeeping (`sweep.profile_parts`);
the rest of the wall time is the similarity heatmap and the plan.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

from benchmarks import arguments, environment, report, timed
from explorer.analysis.strategies import PAPER_STRATEGIES
from explorer.experiments.sweep import profile_parts, run_sweep, start_sweep, teaching_preset
from explorer.lm.models import load_model
from explorer.state.store import Store

GOAL = 3.0
SWEEPS = {"teaching": {}, "three strategies": {"strategies": PAPER_STRATEGIES}}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = arguments("sweep-reuse", __doc__)
    parser.add_argument("--limit", type=int, default=None, help="questions per point (default: the teaching preset's)")
    return parser.parse_args(argv)


def _run(loaded, settings, reuse: bool) -> dict:
    store = Store(Path(tempfile.mkdtemp(prefix="sweep-reuse-")) / "runs.sqlite")
    timings: dict[str, float] = {}
    seconds, cpu_seconds, result = timed(
        lambda: run_sweep(loaded, settings, store, start_sweep(store, settings), reuse=reuse, timings=timings)
    )
    return {"seconds": seconds, "cpu_seconds": cpu_seconds, "points": result["points"], "profile": profile_parts(timings)}


def _equal(ours: list[dict], reference: list[dict]) -> bool:
    return len(ours) == len(reference) and all(
        (a["strategy"], a["n"], a["repair"], a["start"], a["accuracy"]) == (b["strategy"], b["n"], b["repair"], b["start"], b["accuracy"])
        and abs(a["val_loss"] - b["val_loss"]) <= 1e-5
        for a, b in zip(ours, reference)
    )


def measure(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_model(args.model, device=args.device)
    sweeps = {}
    for name, overrides in SWEEPS.items():
        settings = teaching_preset(model=args.model, **overrides, **({"limit": args.limit} if args.limit else {}))
        runs = {}
        for path, reuse in (("whole", False), ("reuse", True)):
            runs[path] = _run(loaded, settings, reuse)
            print(f"  {name} {path}: {runs[path]['seconds']:.1f} s ({runs[path]['cpu_seconds']:.1f} s CPU)", file=sys.stderr, flush=True)
        sweeps[name] = {
            "strategies": list(settings.strategies), "stride": settings.stride, "limit": settings.limit,
            "points": len(runs["whole"]["points"]),
            **{path: {k: v for k, v in run.items() if k != "points"} for path, run in runs.items()},
            "speedup": runs["whole"]["seconds"] / runs["reuse"]["seconds"],
            "cpu_speedup": runs["whole"]["cpu_seconds"] / runs["reuse"]["cpu_seconds"],
            "goal": GOAL,
            "same_points": _equal(runs["reuse"]["points"], runs["whole"]["points"]),
        }
        print(f"  {name}: {sweeps[name]['speedup']:.2f}x wall, {sweeps[name]['cpu_speedup']:.2f}x CPU, same points: "
              f"{sweeps[name]['same_points']}, profiles {runs['whole']['profile']} / {runs['reuse']['profile']}", file=sys.stderr, flush=True)
    return {"model": loaded.name, "num_layers": loaded.num_layers, **environment(loaded.device), "sweeps": sweeps}


def table(result: dict) -> str:
    lines = [
        f"{result['model']} ({result['num_layers']} layers), {result['device']} ({result['torch_threads']} threads, "
        f"load average after {result['load_average_after'][0]:.1f} on {result['cpu_count']} CPUs)",
        "",
        "| sweep | points | path | wall s | CPU s | recording | preparation | loss | scoring | linear fits | bookkeeping | speedup (wall / CPU) | same points |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for name, sweep in result["sweeps"].items():
        for path in ("whole", "reuse"):
            run, parts = sweep[path], sweep[path]["profile"]
            speed = f"{sweep['speedup']:.2f}x / {sweep['cpu_speedup']:.2f}x (goal {sweep['goal']:.0f}x)" if path == "reuse" else ""
            lines.append(
                f"| {name} ({', '.join(sweep['strategies'])}; stride {sweep['stride']}) | {sweep['points']} | {path} "
                f"| {run['seconds']:.1f} | {run['cpu_seconds']:.1f} | "
                + " | ".join(f"{parts[p]:.1f}" for p in ("recording", "preparation", "loss", "scoring", "fit", "bookkeeping"))
                + f" | {speed} | {'yes' if sweep['same_points'] else 'NO'} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    return report(measure(args), args.out, table)

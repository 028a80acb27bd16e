"""Sweep cost per point: one model load per sweep (pruned copies) against re-loading the model
for every point.

In one process, for the same "simple"-strategy points (n = 0, 3, 6, ... of L by default) and
the same measurement (held-out loss + task accuracy, `explorer.sweep.eval_config`), it times:
  (a) ours: `load_model` once, then `run_sweep`, which prunes a deep copy per point;
  (b) reload: for each point `load_model` + `prune_block(inplace=True)` + the same evaluation,
      what a script that loops over `python -m explorer prune` / `eval` per point pays.
Per-point seconds include the load, amortized over the sweep for (a). The arms alternate for
`--repeats` rounds (who goes first rotates) and medians are reported; both arms must give the
same numbers. Goal from issue 4: one model load per sweep, i.e. (b)/(a) > 1, growing with the
model's load time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from explorer.heal import quick_eval
from explorer.models import load_model
from explorer.prune import prune_block, strategy_block
from explorer.store import Store
from explorer.sweep import SweepSettings, eval_config, run_sweep, start_sweep

RESULTS = Path(__file__).resolve().parent / "results" / "sweep.json"
ARMS = {"a": "one load per sweep (run_sweep, pruned copies)", "b": "load the model again for every point"}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks sweep", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--fractions", default="0,0.1,0.2,0.3", help="fractions of layers dropped, one point each")
    parser.add_argument("--task", default="", help="default: the sweep's default task")
    parser.add_argument("--limit", type=int, default=16, help="questions per point")
    parser.add_argument("--val-samples", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--out", default=str(RESULTS))
    return parser.parse_args(argv)


def one_load(settings: SweepSettings) -> tuple[float, float, list[dict]]:
    """(load seconds, sweep seconds, points) of a fresh sweep in a scratch store."""
    started = time.perf_counter()
    loaded = load_model(settings.model, device=settings.device)
    loaded_at = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        store = Store(Path(folder) / "runs.sqlite")
        points = run_sweep(loaded, settings, store, start_sweep(store, settings))["points"]
    return loaded_at - started, time.perf_counter() - loaded_at, points


def reload_each(settings: SweepSettings, num_layers: int) -> tuple[float, list[dict]]:
    """(seconds, measurements) when every point loads the model afresh and prunes it in place."""
    config = eval_config(settings)
    started = time.perf_counter()
    measured = []
    for n in settings.block_sizes(num_layers):
        loaded = load_model(settings.model, device=settings.device)
        block = strategy_block("simple", n, num_layers)
        pruned = prune_block(loaded, block.start, block.n, inplace=True).loaded
        measured.append({"n": n, **quick_eval(pruned, config)})
        del loaded, pruned
    return time.perf_counter() - started, measured


def _same_numbers(points: list[dict], measured: list[dict]) -> bool:
    by_n = {p["n"]: p for p in points}
    return all(
        by_n[m["n"]]["accuracy"] == m["accuracy"] and abs(by_n[m["n"]]["val_loss"] - m["val_loss"]) < 1e-5 for m in measured
    )


def measure(args: argparse.Namespace) -> dict:
    from explorer.sweep import parse_fractions

    if args.threads:
        torch.set_num_threads(args.threads)
    settings = SweepSettings(
        model=args.model, device=args.device, strategies=("simple",), fractions=parse_fractions(args.fractions),
        task=args.task, limit=args.limit, val_samples=args.val_samples, seq_len=args.seq_len, batch_size=args.batch_size,
    )
    settings.check()
    num_layers = load_model(settings.model, device=settings.device).num_layers  # also warms the file cache
    points_per_sweep = len(settings.block_sizes(num_layers))
    times: dict[str, list[float]] = {"a": [], "b": [], "load": []}
    agree = True
    for repeat in range(args.repeats):
        for arm in ("ab" if repeat % 2 == 0 else "ba"):
            if arm == "a":
                load, sweep, points = one_load(settings)
                times["load"].append(load)
                times["a"].append((load + sweep) / points_per_sweep)
            else:
                seconds, measured = reload_each(settings, num_layers)
                times["b"].append(seconds / points_per_sweep)
            print(f"  ({arm}) round {repeat + 1}: {times[arm][-1]:.2f} s per point", file=sys.stderr, flush=True)
        agree = agree and _same_numbers(points, measured)
    median = {key: statistics.median(values) for key, values in times.items()}
    return {
        "model": args.model,
        "num_layers": num_layers,
        "device": str(settings.device or ("cuda" if torch.cuda.is_available() else "cpu")),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average_after": os.getloadavg(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "task": settings.task,
        "limit": settings.limit,
        "points_per_sweep": points_per_sweep,
        "block_sizes": settings.block_sizes(num_layers),
        "val_samples": settings.val_samples,
        "seq_len": settings.seq_len,
        "seconds_per_point": times,
        "median_s": median,
        "ratio_b_over_a": median["b"] / median["a"],
        "same_numbers": agree,
    }


def table(result: dict) -> str:
    median = result["median_s"]
    lines = [
        f"{result['model']} ({result['num_layers']} layers), {result['points_per_sweep']} points "
        f"(n = {result['block_sizes']}), {result['task']} x {result['limit']} questions + loss on "
        f"{result['val_samples']} x {result['seq_len']} tokens, {result['device']} ({result['torch_threads']} threads)",
        "",
        "| arm | median s per point | rounds |",
        "|---|---:|---:|",
    ]
    for key, label in ARMS.items():
        lines.append(f"| ({key}) {label} | {median[key]:.2f} | {len(result['seconds_per_point'][key])} |")
    lines += ["", f"model load: {median['load']:.2f} s; (b)/(a) = {result['ratio_b_over_a']:.2f} (goal > 1); "
              f"same numbers both ways: {result['same_numbers']}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    result = measure(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(table(result))
    print(f"\nwritten to {out}")
    return 0

"""Timing benchmarks, run with `python -m benchmarks [NAME] [options]` (not part of the test suite).

Each entry of BENCHMARKS names a module with `main(argv) -> int`; results go to
benchmarks/results/NAME.json and a markdown table on stdout.
"""

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, TypeVar

from explorer.core.files import write_json

T = TypeVar("T")

RESULTS = Path(__file__).resolve().parent / "results"


def arguments(name: str, doc: str) -> argparse.ArgumentParser:
    """The parser of `python -m benchmarks NAME` with the options every CPU benchmark takes:
    --model, --device, --threads and --out (default benchmarks/results/NAME.json)."""
    parser = argparse.ArgumentParser(prog=f"python -m benchmarks {name}", description=doc.splitlines()[0])
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--out", default=str(RESULTS / f"{name}.json"))
    return parser


def timed(run: Callable[[], T]) -> tuple[float, float, T]:
    """(wall seconds, CPU seconds of this process, value) of one call; waits for CUDA work to finish
    so a GPU run is timed, not just queued. CPU time next to wall time shows how much of a
    slowdown on a shared machine is other processes' load."""
    import torch

    start, start_cpu = time.perf_counter(), time.process_time()
    value = run()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start, time.process_time() - start_cpu, value


def alternated(name: str, runs: dict[str, Callable[[], T]], questions: int, repeats: int) -> tuple[dict, dict[str, T]]:
    """Time `runs` ("ours" and "lm_eval") `repeats` times each, alternating which goes first so neither
    always finds the caches the other warmed; (medians, ratio and questions per second; each run's
    last output, to check they agree)."""
    times: dict[str, list[float]] = {key: [] for key in runs}
    cpu: dict[str, list[float]] = {key: [] for key in runs}
    outputs: dict[str, T] = {}
    order = list(runs.items())
    for repeat in range(repeats):
        for key, run in order if repeat % 2 == 0 else order[::-1]:
            seconds, cpu_seconds, outputs[key] = timed(run)
            times[key].append(seconds)
            cpu[key].append(cpu_seconds)
            print(f"  {name} {key} run {len(times[key])}: {seconds:.2f} s ({cpu_seconds:.2f} s CPU)", file=sys.stderr, flush=True)
    median = {key: statistics.median(t) for key, t in times.items()}
    median_cpu = {key: statistics.median(t) for key, t in cpu.items()}
    return {"questions": questions, "times_s": times, "cpu_times_s": cpu, "median_s": median, "median_cpu_s": median_cpu,
            "questions_per_s": {key: questions / s for key, s in median.items()},
            "speedup": median["lm_eval"] / median["ours"], "cpu_speedup": median_cpu["lm_eval"] / median_cpu["ours"]}, outputs


def environment(device: object) -> dict:
    """What every result records about the machine, so figures from busy and idle runs are told apart."""
    import torch

    return {
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average_after": os.getloadavg(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def report(result: dict, out: str, table: Callable[[dict], str]) -> int:
    """Write the result JSON and print its markdown table: the one ending every benchmark shares."""
    path = write_json(out, result)  # whole or not at all (explorer/core/files.py)
    print(table(result))
    print(f"\nwritten to {path}")
    return 0


BENCHMARKS = {
    "similarity": "benchmarks.similarity",
    "gpu": "benchmarks.gpu",
    "scoring": "benchmarks.scoring",
    "heal": "benchmarks.heal",
    "sweep": "benchmarks.sweep",
    "stream": "benchmarks.stream",
    "threads": "benchmarks.threads",
    "sweep-reuse": "benchmarks.sweep_reuse",
    "repair": "benchmarks.repair",
    "gguf-export": "benchmarks.gguf_export",
    "speed": "benchmarks.speed",
    "distill": "benchmarks.distill",
    "generation": "benchmarks.generation",
    "strategies": "benchmarks.strategies",
}

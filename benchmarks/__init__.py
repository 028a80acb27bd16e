"""Timing benchmarks, run with `python -m benchmarks [NAME] [options]` (not part of the test suite).

Each entry of BENCHMARKS names a module with `main(argv) -> int`; results go to
benchmarks/results/NAME.json and a markdown table on stdout.
"""

import argparse
import os
import platform
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

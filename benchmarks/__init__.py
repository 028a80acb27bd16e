"""Timing benchmarks, run with `python -m benchmarks [NAME] [options]` (not part of the test suite).

Each entry of BENCHMARKS names a module with `main(argv) -> int`; results go to
benchmarks/results/NAME.json and a markdown table on stdout.
"""

import argparse
import json
from pathlib import Path
from typing import Callable

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


def report(result: dict, out: str, table: Callable[[dict], str]) -> int:
    """Write the result JSON and print its markdown table: the one ending every benchmark shares."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    print(table(result))
    print(f"\nwritten to {path}")
    return 0


BENCHMARKS = {
    "similarity": "benchmarks.similarity",
    "gpu": "benchmarks.gpu",
    "scoring": "benchmarks.scoring",
    "heal": "benchmarks.heal",
    "sweep": "benchmarks.sweep",
}

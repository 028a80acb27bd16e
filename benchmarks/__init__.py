"""Timing benchmarks, run with `python -m benchmarks [NAME] [options]` (not part of the test suite).

Each entry of BENCHMARKS names a module with `main(argv) -> int`; results go to
benchmarks/results/NAME.json and a markdown table on stdout.
"""

import json
from pathlib import Path
from typing import Callable


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

"""Timing benchmarks, run with `python -m benchmarks [NAME] [options]` (not part of the test suite).

Each entry of BENCHMARKS names a module with `main(argv) -> int`; results go to
benchmarks/results/NAME.json and a markdown table on stdout.
"""

BENCHMARKS = {
    "similarity": "benchmarks.similarity",
    "gpu": "benchmarks.gpu",
    "scoring": "benchmarks.scoring",
    "heal": "benchmarks.heal",
    "sweep": "benchmarks.sweep",
}

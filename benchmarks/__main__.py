"""`python -m benchmarks` runs every benchmark; `python -m benchmarks NAME [options]` runs one."""

import importlib
import sys

from benchmarks import BENCHMARKS


def main(argv: list[str]) -> int:
    if argv and argv[0] in ("-h", "--help"):
        print(f"usage: python -m benchmarks [{'|'.join(BENCHMARKS)}] [options]; NAME --help lists its options")
        return 0
    if argv and not argv[0].startswith("-"):
        name, options = argv[0], argv[1:]
        if name not in BENCHMARKS:
            print(f"error: unknown benchmark '{name}': choose one of {', '.join(BENCHMARKS)}.", file=sys.stderr)
            return 2
        names = [name]
    else:
        names, options = list(BENCHMARKS), argv
    for name in names:
        if code := importlib.import_module(BENCHMARKS[name]).main(options):
            return code
    return 0


sys.exit(main(sys.argv[1:]))

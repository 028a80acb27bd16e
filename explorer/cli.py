"""`python -m explorer COMMAND ...`: every capability of the app without Streamlit.

Each command is a `(add_arguments, run)` pair in COMMANDS. Failures a user caused exit 2
with one line on stderr (no traceback); results go to --out as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable

from explorer.errors import ExplorerError


def _write_json(path: str, data: dict) -> None:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=1))


def _progress(label: str) -> Callable[[int, int], None]:
    def report(done: int, total: int) -> None:
        print(f"{label}: {done}/{total}", file=sys.stderr, flush=True)

    return report


def _model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="embedded", help="'embedded', a Hugging Face id, a folder or a .gguf file")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--load-in-4bit", action="store_true", help="bitsandbytes nf4 weights")
    parser.add_argument("--trust-remote-code", action="store_true")


def _load(args: argparse.Namespace):
    from explorer.models import load_model

    return load_model(args.model, device=args.device, load_in_4bit=args.load_in_4bit, trust_remote_code=args.trust_remote_code)


def _similarity_arguments(parser: argparse.ArgumentParser) -> None:
    _model_arguments(parser)
    parser.add_argument("--text-file", default="embedded", help="'embedded', 'c4', or a .txt/.jsonl/.parquet file")
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--out", required=True)


def _similarity(args: argparse.Namespace) -> None:
    from explorer.data import check_settings, split_documents
    from explorer.similarity import cached_distances

    check_settings(args.samples, args.seq_len, args.batch_size)
    next(iter(split_documents(args.text_file, "train")), None)  # a missing or unreadable file fails before the model loads
    loaded = _load(args)
    _, result, _ = cached_distances(loaded, args.text_file, args.samples, args.seq_len, args.batch_size, progress=_progress("samples"))
    _write_json(args.out, result.to_json())


COMMANDS: dict[str, tuple[Callable, Callable, str]] = {
    "similarity": (_similarity_arguments, _similarity, "angular distances for every (l, n)"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m explorer", description="Layer-Pruning Explorer")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (add_arguments, _, help_text) in COMMANDS.items():
        add_arguments(sub.add_parser(name, help=help_text))
    args = parser.parse_args(argv)
    try:
        COMMANDS[args.command][1](args)
    except ExplorerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 0

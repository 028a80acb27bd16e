"""Peak memory and time of the layer-streamed analysis against the in-memory model.

The same work (the all-(l, n) distances, then separately the validation loss) runs on the
embedded model's safetensors folder in fresh subprocesses, one per (mode, work), since a
process's RSS high-water mark (`resource.getrusage(RUSAGE_SELF).ru_maxrss`) never goes down:
  baseline: imports, tokenizer and samples only, no weights (what every mode pays anyway),
  memory:   `load_model` + the work on the whole model,
  stream:   `open_streamed` + the same work, layer by layer.
CUDA peak (`torch.cuda.max_memory_allocated`) is reported too when the device is CUDA. The
parent checks both modes give the same distances and loss, and compares the streamed peak
above baseline with the goal: embeddings + one decoder layer + activations (input and output
of a layer, all tokens) + the last-token states, from the model's own sizes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

from benchmarks import arguments, report

MODES = ("baseline", "memory", "stream")
WORKS = ("similarity", "loss")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = arguments("stream", __doc__)
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--loss-batch-size", type=int, default=2, help="smaller: the [B, T, vocab] logits dominate otherwise")
    parser.add_argument("--worker", nargs=2, metavar=("MODE", "WORK"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def worker(args: argparse.Namespace) -> dict:
    """One (mode, work) in this process; prints its measurements as JSON."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers import AutoTokenizer

    from explorer.analysis.similarity import compute_distances
    from explorer.evaluation.evaluate import validation_loss
    from explorer.lm.data import make_samples
    from explorer.lm.models import load_model
    from explorer.lm.stream import open_streamed

    mode, work = args.worker
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    samples = make_samples(tokenizer, "embedded", args.samples, args.seq_len).ids
    started = time.perf_counter()
    value = None
    if mode != "baseline":
        model = load_model(args.model, device=args.device) if mode == "memory" else open_streamed(args.model, device=args.device)
        if work == "similarity":
            value = compute_distances(model, samples, args.batch_size).distances
        else:
            value = validation_loss(model, "embedded", args.samples, args.seq_len, args.loss_batch_size)
    seconds = time.perf_counter() - started
    cuda = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
    return {"mode": mode, "work": work, "seconds": seconds, "rss_peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "cuda_peak": cuda, "value": value}


def sizes(args: argparse.Namespace) -> dict:
    """Bytes of the embeddings, the largest decoder layer and the activations, from the checkpoint."""
    from explorer.lm.stream import open_streamed

    streamed = open_streamed(args.model, device="cpu")
    config = streamed.model.config.get_text_config()
    embeddings = sum(p.numel() * p.element_size() for p in streamed.model.get_input_embeddings().parameters())
    layer = max(sum(p.numel() for p in t.parameters()) for t in streamed.templates) * streamed.dtype.itemsize
    tokens = args.samples * args.seq_len
    activations = 2 * tokens * config.hidden_size * streamed.dtype.itemsize
    states = args.samples * (streamed.num_layers + 1) * config.hidden_size * 4
    total = sum(sum(p.numel() for p in t.parameters()) for t in streamed.templates) * streamed.dtype.itemsize + embeddings
    return {"embeddings": embeddings, "layer": layer, "activations": activations, "last_token_states": states, "weights": total,
            "goal": embeddings + layer + activations + states}


def measure(args: argparse.Namespace) -> dict:
    from explorer.lm.models import embedded_folder

    shown = args.model  # what the result records: "embedded", not this machine's cache path
    if args.model == "embedded":
        args.model = str(embedded_folder())
    runs = {}
    for work in WORKS:
        for mode in MODES if work == "similarity" else MODES[1:]:
            command = [sys.executable, "-m", "benchmarks", "stream", "--worker", mode, work, "--model", args.model,
                       "--samples", str(args.samples), "--seq-len", str(args.seq_len), "--batch-size", str(args.batch_size),
                       "--loss-batch-size", str(args.loss_batch_size)]
            command += ["--threads", str(args.threads)] if args.threads else []
            command += ["--device", args.device] if args.device else []
            out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            runs[f"{mode}/{work}"] = json.loads(out.strip().splitlines()[-1])
            print(f"  {mode}/{work}: {runs[f'{mode}/{work}']['seconds']:.1f} s, "
                  f"RSS {runs[f'{mode}/{work}']['rss_peak'] / 2**20:.0f} MiB", file=sys.stderr, flush=True)
    memory, stream = runs["memory/similarity"]["value"], runs["stream/similarity"]["value"]
    gap = max(abs(a - b) for ra, rb in zip(memory, stream) for a, b in zip(ra, rb))
    loss_gap = abs(runs["memory/loss"]["value"] - runs["stream/loss"]["value"])
    for run in runs.values():
        run.pop("value")
    return {"runs": runs, "sizes": sizes(args), "max_distance_gap": gap, "loss_gap": loss_gap,
            "model": shown, "samples": args.samples, "seq_len": args.seq_len, "batch_size": args.batch_size,
            "loss_batch_size": args.loss_batch_size, "threads": args.threads, "machine": platform.processor() or platform.machine(),
            "load": os.getloadavg(), "uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()}


def table(result: dict) -> str:
    mib = 2**20
    runs, size = result["runs"], result["sizes"]
    base = runs["baseline/similarity"]["rss_peak"]
    lines = [
        f"{result['samples']} samples x {result['seq_len']} tokens; {result['uptime']}",
        "",
        "| work | mode | time (s) | peak RSS (MiB) | above baseline (MiB) | CUDA peak (MiB) |",
        "|---|---|---|---|---|---|",
        f"| — | baseline (imports, tokenizer, samples) | — | {base / mib:.0f} | 0 | — |",
    ]
    for key, run in runs.items():
        if run["mode"] == "baseline":
            continue
        cuda = "—" if run["cuda_peak"] is None else f"{run['cuda_peak'] / mib:.0f}"
        lines.append(f"| {run['work']} | {run['mode']} | {run['seconds']:.1f} | {run['rss_peak'] / mib:.0f} | "
                     f"{(run['rss_peak'] - base) / mib:.0f} | {cuda} |")
    lines += [
        "",
        f"weights {size['weights'] / mib:.0f} MiB; goal for streaming = embeddings {size['embeddings'] / mib:.0f} + one layer "
        f"{size['layer'] / mib:.1f} + activations {size['activations'] / mib:.1f} + last-token states "
        f"{size['last_token_states'] / mib:.1f} = {size['goal'] / mib:.0f} MiB above baseline",
        f"equal outputs: max distance gap {result['max_distance_gap']:.1e}, loss gap {result['loss_gap']:.1e}",
    ]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    return report(measure(args), args.out, table)

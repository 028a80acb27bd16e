"""How much the all-(l, n) similarity pass costs over a plain forward pass.

In one process, on the same padded batches, it times:
  (a) `compute_distances`: our pass (base model + last-token hooks + all pairs),
  (b) a bare forward of the full CausalLM with output_hidden_states off,
  (c) a bare forward of `model.base_model` (no LM head, what (a) runs underneath),
  (d) a PruneMe-style loop: for each n one full forward with output_hidden_states=True,
      keeping only row n (PruneMe's script computes one block size per run).
Each pass is warmed up once, then timed `--repeats` times, interleaved so that load from
other processes hits all passes alike; the median is reported. (d) costs L forwards per
run, so it is timed `--pruneme-repeats` times (default 1). Goal: (a)/(b) <= 1.05.
"""

from __future__ import annotations

import argparse
import statistics
import sys

import torch

from benchmarks import arguments, environment, report, timed
from explorer.analysis.similarity import angular_distance, compute_distances
from explorer.lm.data import batches, make_samples, pad_batch
from explorer.lm.models import LoadedModel, load_model

PASSES = {
    "a": "similarity pass (compute_distances)",
    "b": "bare forward, full CausalLM",
    "c": "bare forward, base model (no LM head)",
    "d": "PruneMe-style loop (one forward per n)",
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = arguments("similarity", __doc__)
    parser.add_argument("--source", default="embedded", help="calibration text: 'embedded' or a .txt/.jsonl/.parquet file")
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pruneme-repeats", type=int, default=1, help="timed runs of (d); 0 skips it")
    return parser.parse_args(argv)


def _padded(loaded: LoadedModel, samples: list[list[int]], batch_size: int):
    """The batches exactly as compute_distances builds them (padding included in every timing)."""
    pad_id = loaded.tokenizer.pad_token_id or 0
    for chunk in batches(samples, batch_size):
        input_ids, mask = pad_batch(chunk, pad_id)
        yield input_ids.to(loaded.device), mask.to(loaded.device)


@torch.no_grad()
def bare_forward(module: torch.nn.Module, loaded: LoadedModel, samples: list[list[int]], batch_size: int) -> None:
    for input_ids, mask in _padded(loaded, samples, batch_size):
        module(input_ids=input_ids, attention_mask=mask, use_cache=False, output_hidden_states=False)


@torch.no_grad()
def pruneme_rows(loaded: LoadedModel, samples: list[list[int]], batch_size: int, sizes: range) -> list[list[float]]:
    """Row n for each n, each from its own full pass with every hidden state returned. Like
    PruneMe, x^L is HF's last hidden state (after the final norm); only its time is compared."""
    rows = []
    for n in sizes:
        total = None
        for input_ids, mask in _padded(loaded, samples, batch_size):
            hidden = loaded.model(input_ids=input_ids, attention_mask=mask, use_cache=False, output_hidden_states=True).hidden_states
            picked = torch.arange(input_ids.shape[0], device=input_ids.device), mask.sum(dim=1) - 1
            last = [h[picked] for h in hidden]
            row = torch.stack([angular_distance(last[l], last[l + n]).sum() for l in range(len(last) - n)])
            total = row if total is None else total + row
        rows.append((total / len(samples)).tolist())
    return rows


def _check_pruneme(ours: list[list[float]], theirs: list[list[float]], num_layers: int) -> float:
    """Largest gap between (a) and (d) over pairs that do not involve x^L (where (d) uses the
    normed state): shows both compute the same distances."""
    gaps = [abs(ours[n - 1][l] - row[l]) for n, row in enumerate(theirs, 1) for l in range(num_layers - n)]
    return max(gaps, default=0.0)


def measure(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_model(args.model, device=args.device)
    samples = make_samples(loaded.tokenizer, args.source, args.samples, args.seq_len).ids
    num_layers = loaded.num_layers
    model, device, size = loaded.model, loaded.device, args.batch_size
    runs = {
        "a": lambda: compute_distances(loaded, samples, size),
        "b": lambda: bare_forward(model, loaded, samples, size),
        "c": lambda: bare_forward(model.base_model, loaded, samples, size),
        "d": lambda: pruneme_rows(loaded, samples, size, range(1, num_layers + 1)),
    }
    for key in "abc":  # warm-up; (d) warms up on one batch and one n
        timed(runs[key])
    timed(lambda: pruneme_rows(loaded, samples[:size], size, range(1, 2)))
    times: dict[str, list[float]] = {key: [] for key in PASSES}
    values: dict[str, object] = {}
    for repeat in range(max(args.repeats, args.pruneme_repeats)):
        keys = "abc"[repeat % 3:] + "abc"[: repeat % 3] if repeat < args.repeats else ""  # rotate who goes first
        for key in keys + ("d" if repeat < args.pruneme_repeats else ""):
            seconds, _, values[key] = timed(runs[key])
            times[key].append(seconds)
            print(f"  ({key}) run {len(times[key])}: {seconds:.2f} s", file=sys.stderr, flush=True)
    median = {key: statistics.median(t) for key, t in times.items() if t}
    ratios = {"a/b": median["a"] / median["b"], "a/c": median["a"] / median["c"]}
    check = None
    if "d" in median:
        ratios["d/a"] = median["d"] / median["a"]
        check = _check_pruneme(values["a"].distances, values["d"], num_layers)
    return {
        "model": loaded.name,
        "num_layers": num_layers,
        **environment(device),
        "samples": len(samples),
        "seq_len": args.seq_len,
        "batch_size": size,
        "tokens": sum(len(s) for s in samples),
        "times_s": times,
        "median_s": median,
        "ratios": ratios,
        "goal_a_over_b": 1.05,
        "pruneme_max_gap_vs_ours": check,
    }


def table(result: dict) -> str:
    median, base = result["median_s"], result["median_s"]["a"]
    lines = [
        f"{result['model']}, {result['samples']} samples x {result['seq_len']} tokens, batch {result['batch_size']}, "
        f"{result['device']} ({result['torch_threads']} threads)",
        "",
        "| pass | median s | runs | relative to (a) |",
        "|---|---:|---:|---:|",
    ]
    for key, label in PASSES.items():
        if key in median:
            lines.append(f"| ({key}) {label} | {median[key]:.2f} | {len(result['times_s'][key])} | {median[key] / base:.2f} |")
    lines.append("")
    lines.append(" ".join(f"{name} = {value:.3f}" for name, value in result["ratios"].items()) + " (goal a/b <= 1.05)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    result = measure(args)
    return report(result, args.out, table)

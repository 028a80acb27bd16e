"""Direct GGUF prune against dequantize-prune-save: the time to a pruned GGUF, and the file sizes.

On the embedded GGUF (SmolLM2-135M-Instruct, Q4_1 with a Q8_0 embedding), in one process, the
same block removed both ways:
  direct:   explorer.export.gguf.prune_gguf: kept tensors copied, still quantized (run twice)
  baseline: what a user does without it: load the GGUF into transformers (dequantizing it to
            fp32), prune_block, save_pretrained, convert the folder's model back to GGUF (f16,
            llama.cpp's converter default; no Q4_1 writer exists in Python, so it stays f16)
Both outputs are checked: the direct GGUF, loaded back with transformers, must give the baseline
model's logits exactly (both dequantize the same Q4_1 blocks), and its kept tensors are
byte-identical to the source's. The file is read once before timing, so neither side pays the
first read from disk.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

from benchmarks import arguments, environment, report, timed
from explorer.export.gguf import convert_model, prune_gguf
from explorer.lm.models import embedded_gguf_path, load_model
from explorer.lm.save import save_pruned
from explorer.surgery.prune import prune_block

TEXT = "The capital of France is Paris, and the capital of Italy is"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = arguments("gguf-export", __doc__)
    parser.add_argument("--start", type=int, default=20)
    parser.add_argument("--n", type=int, default=5)
    return parser.parse_args(argv)


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file() and p.suffix == ".safetensors")


def measure(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="gguf-export-bench-") as work:
        return measure_in(args, Path(work))


def measure_in(args: argparse.Namespace, work: Path) -> dict:
    import gguf
    from transformers import AutoModelForCausalLM

    source = embedded_gguf_path()
    source.read_bytes()  # into the page cache for both sides
    direct_runs = [timed(lambda: prune_gguf(source, work / "direct.gguf", range(args.start, args.start + args.n))) for _ in range(2)]

    def baseline():
        loaded = load_model(str(source), device="cpu", dtype=torch.float32)  # the GGUF itself: dequantized here
        pruned = prune_block(loaded, args.start, args.n, inplace=True).loaded
        folder = save_pruned(pruned, work / "folder", {"kind": "benchmark"})
        convert_model(pruned, work / "baseline-f16.gguf", "f16", source)
        return pruned, folder

    baseline_s, baseline_cpu, (pruned, folder) = timed(baseline)
    ids = pruned.tokenizer(TEXT, return_tensors="pt").input_ids
    direct_model = AutoModelForCausalLM.from_pretrained(work, gguf_file="direct.gguf", dtype=torch.float32).eval()
    with torch.no_grad():
        logits_gap = (direct_model(ids).logits - pruned.model(ids).logits).abs().max().item()
    reader = gguf.GGUFReader(source)
    before = {t.name: t for t in reader.tensors}
    after = gguf.GGUFReader(work / "direct.gguf").tensors
    kept = [i for i in range(reader.fields["llama.block_count"].contents()) if not args.start <= i < args.start + args.n]

    def origin(name: str) -> str:
        if not name.startswith("blk."):
            return name
        _, index, rest = name.split(".", 2)
        return f"blk.{kept[int(index)]}.{rest}"

    identical = all(t.data.tobytes() == before[origin(t.name)].data.tobytes() for t in after)
    return {
        "model": "embedded GGUF", "block": [args.start, args.n],
        "direct_s": [run[0] for run in direct_runs], "direct_cpu_s": [run[1] for run in direct_runs],
        "baseline_s": baseline_s, "baseline_cpu_s": baseline_cpu,
        "bytes": {"source_gguf": source.stat().st_size, "direct_gguf": (work / "direct.gguf").stat().st_size,
                  "baseline_safetensors_fp32": folder_bytes(folder), "baseline_gguf_f16": (work / "baseline-f16.gguf").stat().st_size},
        "direct_logits_max_abs_diff": logits_gap, "kept_tensors_identical": identical,
        **environment("cpu"),
    }


def table(result: dict) -> str:
    mib = {k: v / 2**20 for k, v in result["bytes"].items()}
    direct = min(result["direct_s"])
    lines = [
        f"{result['model']}, layers [{result['block'][0]}, {sum(result['block'])}) removed; {result['torch_threads']} torch "
        f"threads, load average after " + ", ".join(f"{x:.1f}" for x in result["load_average_after"]),
        "",
        "| way | wall (CPU) time | output | size |",
        "| --- | ---: | --- | ---: |",
        f"| direct GGUF prune (kept tensors copied) | {direct:.1f} s ({min(result['direct_cpu_s']):.1f} s) | Q4_1 GGUF | "
        f"{mib['direct_gguf']:.1f} MiB |",
        f"| dequantize, prune, save, convert back | {result['baseline_s']:.1f} s ({result['baseline_cpu_s']:.1f} s) | "
        f"fp32 safetensors + f16 GGUF | {mib['baseline_safetensors_fp32']:.1f} + {mib['baseline_gguf_f16']:.1f} MiB |",
        "",
        f"Ratio {result['baseline_s'] / direct:.1f}x; source GGUF {mib['source_gguf']:.1f} MiB; direct GGUF logits vs the "
        f"baseline's pruned model: max |diff| {result['direct_logits_max_abs_diff']:.1e}; kept tensors byte-identical: "
        f"{result['kept_tensors_identical']}.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    return report(measure(args), args.out, table)

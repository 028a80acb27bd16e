"""What a speed run shows (the CLI's lines, the Prune page's panel, the Runs page): pure functions of
its result (explorer.evaluation.speed.measure_speed's, plus the models' names)."""

from __future__ import annotations

import pandas as pd

from explorer.evaluation.speed import SpeedSettings
from explorer.state.store import Run
from explorer.views.progress import format_duration

MB = 2**20


def _megabytes(value: int | None) -> float | None:
    return None if value is None else value / MB


def speed_frame(result: dict) -> pd.DataFrame:
    """One row per model and batch size: its per-token figures, memory, and speedups over the reference."""
    rows = []
    for label, figures in result["models"].items():
        compared = result["comparisons"].get(label)
        for batch, timing in figures["batches"].items():
            memory = figures["memory"]
            rows.append({
                "model": label, "layers": figures["layers"], "parameters (M)": figures["parameters"] / 1e6, "batch": int(batch),
                "prefill ms/token (min)": timing["prefill_ms_per_token"]["min"],
                "decode tokens/s (best)": timing["decode_tokens_per_s"]["max"],
                "decode tokens/s (median)": timing["decode_tokens_per_s"]["median"],
                "prefill speedup": compared["prefill"][batch]["min"] if compared else None,
                "decode speedup": compared["decode"][batch]["min"] if compared else None,
                "decode speedup (median)": compared["decode"][batch]["median"] if compared else None,
                "ideal": compared["ideal"] if compared else None,
                "decode ÷ ideal": compared["decode_vs_ideal"][batch] if compared else None,
                "weights (MB)": _megabytes(memory["weights_bytes"]),
                "KV cache (kB/token)": figures["kv_bytes_per_token"] / 1024,
                f"peak (MB, batch {memory['batch']})": _megabytes(memory["peak_bytes"]),
            })
    return pd.DataFrame(rows)


def speed_lines(result: dict) -> list[str]:
    """The measurement in words: each comparison's speedups against the ideal and what holds them
    below it, the memory saved, and the conditions (device, threads, load)."""
    lines = []
    reference = result["models"][result["reference"]]
    for label, compared in result["comparisons"].items():
        figures = result["models"][label]
        decode = ", ".join(f"×{s['min']:.2f} at batch {b}" for b, s in compared["decode"].items())
        prefill = ", ".join(f"×{s['min']:.2f} at batch {b}" for b, s in compared["prefill"].items())
        ratio = ", ".join(f"{r:.2f}" for r in compared["decode_vs_ideal"].values())
        lines.append(
            f"{label} ({figures['layers']} of {reference['layers']} layers): decode {decode}; prefill {prefill}; "
            f"ideal ×{compared['ideal']:.2f} (decode measured ÷ ideal {ratio}). The LM head, embeddings and per-step "
            f"Python take {compared['fixed_share']:.0%} of an unpruned decode step (head and final norm "
            f"{compared['head_share']:.0%}), which caps the speedup at ×{compared['bound_with_fixed_costs']:.2f}.")
        lines.append(f"  weights {_megabytes(reference['memory']['weights_bytes']):.0f} → {_megabytes(figures['memory']['weights_bytes']):.0f} MB, "
                     f"KV cache {reference['kv_bytes_per_token'] / 1024:.1f} → {figures['kv_bytes_per_token'] / 1024:.1f} kB per token")
    if not result["comparisons"]:
        for label, figures in result["models"].items():
            speeds = ", ".join(f"{t['decode_tokens_per_s']['max']:.1f} tokens/s at batch {b}" for b, t in figures["batches"].items())
            lines.append(f"{label} ({figures['layers']} layers): decode {speeds}; weights "
                         f"{_megabytes(figures['memory']['weights_bytes']):.0f} MB, KV cache {figures['kv_bytes_per_token'] / 1024:.1f} kB per token")
    before, after = result["load_average_before"][0], result["load_average_after"][0]
    lines.append(f"on {result['device']} ({result['dtype']}), {result['threads']} torch threads, load {before:.1f} → {after:.1f}; "
                 f"fastest of {result['settings']['repeats']} interleaved repeats")
    return lines


def speed_headline(run: Run) -> str | None:
    """The Runs page's one line: the first comparison's decode speedup at the smallest batch, against the ideal."""
    if "comparisons" not in run.result:
        return None
    for label, compared in run.result["comparisons"].items():
        batch, speedup = next(iter(compared["decode"].items()))
        return f"{label}: decode ×{speedup['min']:.2f} at batch {batch} (ideal ×{compared['ideal']:.2f})"
    label, figures = next(iter(run.result["models"].items()))
    batch, timing = next(iter(figures["batches"].items()))
    return f"{label}: {timing['decode_tokens_per_s']['max']:.1f} tokens/s at batch {batch}"


def speed_table(run: Run, events: list[dict]) -> pd.DataFrame | None:
    return speed_frame(run.result) if run.result and "models" in run.result else None


def speed_description(settings: dict) -> str:
    """e.g. 'layers 21-28 dropped · prompts of 64 tokens, 32 decode steps at batch 1, 8 · 3 repeats'."""
    speed = SpeedSettings.from_json(settings["speed"])
    drop = settings.get("drop")
    if drop:
        what = f"layers {drop['start']}-{drop['start'] + drop['n'] - 1} dropped" if drop["n"] else "no layers dropped"
    else:
        what = f"against {settings['reference']}" if settings.get("reference") else "the model alone"
    return (f"{what} · prompts of {speed.prompt_tokens} tokens, {speed.new_tokens} decode steps at batch "
            f"{', '.join(map(str, speed.batch_sizes))} · {speed.repeats} repeats")


def estimate_text(seconds: float, settings: SpeedSettings, models: int) -> str:
    """What the panel says before a measurement starts."""
    return (f"About {format_duration(seconds)} on this machine (estimated from a short decode here): {models} models × "
            f"{settings.repeats} interleaved repeats × batch {', '.join(map(str, settings.batch_sizes))}, plus the output check, "
            "a warm-up and the memory pass.")

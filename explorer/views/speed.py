"""What a speed run shows (the CLI's lines, the Prune page's panel, the Runs page): pure functions of
its result (explorer.evaluation.speed.measure_speed's, plus the models' names)."""

from __future__ import annotations

import pandas as pd

from explorer.core.options import widget
from explorer.evaluation.speed import SpeedSettings, parse_sizes
from explorer.state.store import Run, Store, of_kind
from explorer.views.progress import current_phase, format_duration
from explorer.views.session import page_runs

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
                "decode speedup (CPU time)": compared["decode_cpu"][batch]["min"] if compared else None,
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
        cpu = ", ".join(f"×{s['min']:.2f}" for s in compared["decode_cpu"].values())
        lines.append(
            f"{label} ({figures['layers']} of {reference['layers']} layers): decode {decode} (in CPU time {cpu}); prefill "
            f"{prefill}; ideal ×{compared['ideal']:.2f} (decode measured ÷ ideal {ratio}). The LM head, embeddings and per-step "
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
        what = f"{describe_drop(drop)} dropped"
    else:
        what = f"against {settings['reference']}" if settings.get("reference") else "the model alone"
    return (f"{what} · prompts of {speed.prompt_tokens} tokens, {speed.new_tokens} decode steps at batch "
            f"{', '.join(map(str, speed.batch_sizes))} · {speed.repeats} repeats")


def speed_estimate_text(seconds: float, settings: SpeedSettings, models: int) -> str:
    """What the panel says before a measurement starts: priced by a short decode here, not from
    earlier runs as views.progress.estimate_text is (a speed run's length is set by its settings)."""
    return (f"About {format_duration(seconds)} on this machine (estimated from a short decode here): {models} models × "
            f"{settings.repeats} interleaved repeats × batch {', '.join(map(str, settings.batch_sizes))}, plus the output check, "
            "a warm-up and the memory pass.")


WIDGETS = {"ph_speed_prompt": "prompt_tokens", "ph_speed_steps": "new_tokens", "ph_speed_batches": "batch_sizes",
           "ph_speed_repeats": "repeats"}  # the Prune page's speed widgets -> SpeedSettings fields
LABELS = {key: widget(SpeedSettings, name) for key, name in WIDGETS.items()}  # label and help, as the CLI's


def widget_values(settings: SpeedSettings) -> dict:
    """The panel's widget values for these settings (batch sizes as the text the user types)."""
    values = {key: getattr(settings, name) for key, name in WIDGETS.items()}
    return {**values, "ph_speed_batches": ",".join(map(str, settings.batch_sizes))}


def form_settings(values: dict) -> SpeedSettings:
    """SpeedSettings from the panel's widget values (checked by the caller)."""
    return SpeedSettings(values["ph_speed_prompt"], values["ph_speed_steps"], parse_sizes(values["ph_speed_batches"]),
                         values["ph_speed_repeats"])


def describe_drop(drop: dict) -> str:
    """'layers 21-28', 'layers 3, 9 and the attention of 4, 7', or 'no layers'."""
    if "start" in drop:
        return f"layers {drop['start']}-{drop['start'] + drop['n'] - 1}" if drop["n"] else "no layers"
    parts = [f"layers {', '.join(map(str, drop['removed']))}"] if drop["removed"] else []
    parts += [f"the {kind} of {', '.join(map(str, drop[key]))}" for key, kind in (("attention", "attention"), ("mlp", "MLP"))
              if drop[key]]
    return " and ".join(parts) or "no layers"


def speed_runs(store: Store, source: str, drop: dict, visitor: str | None) -> list[Run]:
    """This visitor's speed runs (every one for the operator, visitor None) of this model without
    this block, newest first: what the panel shows after a reload."""
    return [run for run in page_runs(store, "speed", visitor) if run.settings.get("drop") == drop
            and run.settings.get("model", {}).get("source") == source]


def speed_progress(events: list[dict], repeats: int) -> tuple[float, str | None]:
    """(fraction done, latest phase) of a speed run: its timed repeats out of all."""
    done = sum(1 for event in of_kind(events, "phase") if event["phase"].startswith("timed repeat"))
    return min(1.0, done / repeats), current_phase(events)

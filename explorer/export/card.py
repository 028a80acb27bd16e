"""The model card (README.md) of every exported folder: what the hub shows and indexes, and what a
reader needs to trust or redo the model.

The YAML front matter carries what the hub reads (`base_model`, `license`, `tags`,
`library_name`, `pipeline_tag`), written by yaml.safe_dump so no name can break it; the body says
which layers went (0-based and as mergekit ranges), how the block was chosen and on what
calibration text, the repair or heal recipe, every evaluation in run.json with its n and interval
(and the speed when measured), the command that redoes it and the library versions. Text a user
typed (model names, paths, file names) only ever appears inside code spans, so it cannot inject
markdown or HTML.
"""

from __future__ import annotations

import dataclasses
import platform
import re
import shlex
from importlib import metadata
from pathlib import Path

import yaml
from huggingface_hub import try_to_load_from_cache

from explorer.core.options import SHARED, flag
from explorer.export.llamacpp import llama_quantize_command
from explorer.export.mergekit import EMBEDDED_HUB_ID, kept_ranges
from explorer.lm.blocks import recorded_layers
from explorer.lm.models import EMBEDDED
from explorer.surgery.heal import HealConfig

CARD_FILE = "README.md"
EMBEDDED_LICENSE = "apache-2.0"  # SmolLM2-135M-Instruct's licence on the hub
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
LIBRARIES = ("torch", "transformers", "peft", "gguf", "layer-pruning-explorer")
STRATEGY_TEXT = {
    "similarity": "the block whose input and output are closest in angular distance (Gromov et al., 2403.17887)",
    "simple": "the n deepest layers before the final one (Gromov et al.'s baseline)",
    "top-cut": "the last n layers, final one included (the cut of Yuan et al., 2402.11700)",
    "manual": "chosen by hand (--start)",
}


def code(text: object) -> str:
    """`text` as an inline code span on one line: markdown and HTML inside it are shown, not run."""
    text = " ".join(str(text).split())
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def fenced(text: str, language: str) -> list[str]:
    """A fenced code block whose fence is longer than any backtick run inside, so no line closes it early."""
    fence = "`" * max(3, max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    return [fence + language, text.strip("\n"), fence]


def _cell(text: object) -> str:
    """A table cell's code span: a pipe would end the cell even inside code, so it is escaped."""
    return code(text).replace("|", "\\|")


def front_matter(path: Path) -> dict:
    """The YAML front matter of a README.md, {} when there is none or it does not parse."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return {}
    match = re.match(r"---\s*\n(.*?)\n---\s*(\n|$)", text, re.S)
    try:
        data = yaml.safe_load(match[1]) if match else {}
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def _first(value) -> str | None:
    value = value[0] if isinstance(value, list) and value else value
    return value if isinstance(value, str) else None


def base_model(model_id: str) -> tuple[str | None, str | None]:
    """(hub id of the base, its licence), each None when unknown: the embedded model's are known; a hub
    id's licence comes from its cached README; a local folder's from its own README's front matter (an
    exported folder names its root base there)."""
    if model_id == EMBEDDED:
        return EMBEDDED_HUB_ID, EMBEDDED_LICENSE
    path = Path(model_id).expanduser()
    if path.is_dir():
        meta = front_matter(path / CARD_FILE)
        return _first(meta.get("base_model")), _first(meta.get("license"))
    if path.suffix == ".gguf" or path.exists() or not HUB_ID.fullmatch(model_id):
        return None, None
    try:
        cached = try_to_load_from_cache(model_id, CARD_FILE)
    except Exception:  # an odd id or cache: the licence is simply unknown
        cached = None
    return model_id, _first(front_matter(Path(cached)).get("license")) if isinstance(cached, str) else None


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def _flags(config_cls, values: dict) -> list[str]:
    """A settings dataclass's recorded values as its CLI options (explorer.core.options' flags)."""
    args = []
    for item in dataclasses.fields(config_cls):
        value = values.get(item.name)
        if value is None or item.metadata.get("cli") == SHARED:
            continue
        if isinstance(value, bool):
            args.append(flag(item) if value else "--no-" + flag(item)[2:])
        else:
            args += [flag(item), ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)]
    return args


def _task_flags(options: dict) -> list[str]:
    named = {"mmlu_dir": "--mmlu-dir", "subjects": "--subjects", "shots": "--shots", "split": "--split"}
    args = []
    for key, value in options.items():
        args += [named[key], str(value)] if key in named else ["--option", f"{key}={value}"]
    return args


def reproduce_command(record: dict, folder_name: str) -> str:
    """The `python -m explorer` line that makes this model again from its base."""
    block = recorded_layers(record["block"])
    args = ["python", "-m", "explorer", "heal" if record.get("kind") == "heal" else "prune", "--model", record["model"]]
    strategy = record.get("strategy")
    if strategy and strategy != "manual":  # a sub-layer strategy's n counts the sub-layers it drops
        args += ["--strategy", strategy, "--n", str(block.n or block.sublayers)]
    elif block.contiguous:
        args += ["--start", str(block.start), "--n", str(block.n)]
    else:
        args += [flag for kind, indices in (("--layers", block.removed), ("--attention", block.attention), ("--mlp", block.mlp))
                 if indices for flag in (kind, ",".join(map(str, indices)))]
    args += ["--allow-final"] if block.includes_final and strategy != "top-cut" else []
    similarity = record.get("similarity") or record.get("calibration")  # the text the choice was computed on
    if similarity:
        args += ["--text-file", similarity["source"], "--samples", str(similarity["samples"]), "--seq-len", str(similarity["seq_len"])]
    if record.get("kind") == "heal":
        args += _flags(HealConfig, record["heal"]) + _task_flags(record["heal"].get("eval_options") or {})
    repair = record.get("repair") or {}
    if repair.get("method") == "linear":
        args += ["--repair", "linear", "--ridge", str(repair["calibration"]["ridge"])]
        if record.get("kind") != "heal" and not similarity:  # prune fits on its text options; heal on its healing text
            calibration = repair["calibration"]
            args += ["--text-file", calibration["source"], "--samples", str(calibration["samples"]),
                     "--seq-len", str(calibration["seq_len"]), "--batch-size", str(calibration["batch_size"])]
    if record.get("dtype"):
        args += ["--dtype", record["dtype"]]
    return shlex.join(args + ["--out", folder_name])


def _tags(record: dict) -> list[str]:
    tags = ["layer-pruning", "pruned", "layer-pruning-explorer"]
    if record.get("kind") == "heal":
        tags += ["lora", "healed"]
    if (record.get("repair") or {}).get("method") == "linear":
        tags.append("linear-repair")
    if record.get("gguf"):
        tags.append("gguf")
    return tags


def _choice_lines(record: dict) -> list[str]:
    strategy = record.get("strategy")
    if not strategy:
        return ["- Given as a first layer and a size (by hand, or picked on the Prune & heal page from a strategy or the "
                "similarity heatmap, which the record does not say)."]
    lines = [f"- Strategy: {code(strategy)}: {STRATEGY_TEXT.get(strategy, 'see run.json')}."]
    if similarity := record.get("similarity"):
        lines.append(f"- Calibration: {similarity['samples']} documents of {similarity['seq_len']} tokens from "
                     f"{code(similarity['source'])} (train split).")
    return lines


def _repair_lines(record: dict) -> list[str]:
    repair = record.get("repair") or {"method": "none"}
    lines = []
    if repair.get("method") == "linear":
        c, fit = repair["calibration"], repair.get("fit") or {}
        lines.append(f"- Linear repair (no training): a least-squares map over the removed block, folded into the layer "
                     f"before it; {c['samples']} calibration documents of {c['seq_len']} tokens from {code(c['source'])}, "
                     f"ridge {c['ridge']:g}.")
        if fit:
            lines.append(f"- Folded into layer {fit['layer']}; held-out relative residual {fit['heldout_residual']:.3f} "
                         f"(unrepaired {fit['heldout_residual_unrepaired']:.3f}).")
    if heal := record.get("heal"):
        lines.append(f"- Healed with {'QLoRA' if heal.get('quantize') else 'LoRA'} (merged into the weights): rank "
                     f"{heal['rank']}, alpha {heal['alpha']}, dropout {heal['dropout']}, on {code(heal['targets'])}; "
                     f"{heal['steps']} steps of {heal['batch_size']} documents x {heal['seq_len']} tokens from "
                     f"{code(heal['source'])}, peak learning rate {heal['lr']:g} ({heal['warmup_steps']} warm-up steps, "
                     f"cosine), seed {heal['seed']}.")
    return lines or ["- None: the layers were removed and nothing else changed."]


def _ci(value, low, high) -> str:
    return f"{value:.1%} [{low:.1%}, {high:.1%}]"


def _evaluation_lines(record: dict) -> list[str]:
    rows = record.get("metrics") or record.get("quick_eval") or {}
    if not rows:
        return ["No evaluation was recorded with this export: score it with `python -m explorer eval --model THIS_FOLDER`."]
    heal = record.get("heal") or {}
    lines = ["| model | held-out loss (± s.e.) | task | accuracy [95% Wilson] | n | chance | agrees with unpruned [95%] |",
             "|---|---|---|---|---|---|---|"]
    for name, row in rows.items():
        n = len(row["predictions"]) if row.get("predictions") else row.get("n_questions", "?")
        se = f" ± {row['val_loss_se']:.3f}" if row.get("val_loss_se") is not None else ""
        agrees = _ci(row["agreement"], row["agreement_ci_low"], row["agreement_ci_high"]) + f" (n {row['agreement_n']})" \
            if row.get("agreement") is not None else "—"
        lines.append(f"| {_cell(name.replace('_', ' '))} | {row['val_loss']:.3f}{se} | {_cell(row.get('task', '?'))} | "
                     f"{_ci(row['accuracy'], row['ci_low'], row['ci_high'])} | {n} | {row['chance']:.0%} | {agrees} |")
    if heal:
        lines.append(f"\nLoss on {heal['val_samples']} held-out documents of {heal['seq_len']} tokens from {code(heal['source'])}.")
    return lines


def _speed_lines(record: dict) -> list[str]:
    speed = record.get("speed")
    if not isinstance(speed, dict) or not speed:
        return []
    return ["", "## Speed", ""] + [f"- {code(key)}: {code(value)}" for key, value in speed.items()]


def model_card(record: dict, folder_name: str) -> str:
    """README.md for an exported folder holding the model that `record` (its run.json) describes."""
    block, model_id = recorded_layers(record["block"]), record["model"]
    base, licence = base_model(model_id)
    meta = {**({"base_model": base} if base and HUB_ID.fullmatch(base) else {}), **({"license": licence} if licence else {}),
            "library_name": "transformers", "pipeline_tag": "text-generation", "tags": _tags(record)}
    ranges = ", ".join(f"[{a}, {b})" for a, b in kept_ranges(block))
    name = record.get("model_name") or model_id
    lines = ["---", yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).strip(), "---", "",
             f"# {code(name)} without {block.describe()}", "",
             "Made with Layer-Pruning Explorer, after *The Unreasonable Ineffectiveness of the Deeper Layers* "
             "(Gromov et al., arXiv 2403.17887) and *Why Lift so Heavy?* (Yuan et al., arXiv 2402.11700).", "",
             "## Removed layers", "",
             f"- Base model: {code(model_id)}" + (f" ({code(base)} on the hub)" if base and base != model_id else "")
             + f"; licence {code(licence) if licence else 'unknown (check the base model)'}.",
             f"- Removed decoder layers (0-based): {', '.join(map(str, block.removed)) or 'none'}.",
             f"- Kept layers as mergekit `layer_range` slices (half-open): {ranges}.",
             f"- Parameters: {record['params_before'] / 1e6:.1f}M before, {record['params_after'] / 1e6:.1f}M after."
             if record.get("params_before") else "- Parameters: not recorded.",
             "", "## How the block was chosen", "", *_choice_lines(record),
             "", "## Repair and healing", "", *_repair_lines(record),
             "", "## Evaluation", "", *_evaluation_lines(record), *_speed_lines(record),
             "", "## Reproduce", "", *fenced(reproduce_command(record, folder_name), "bash"), "",
             "The pruned slice before any repair or healing is rebuilt from the base checkpoint by `mergekit.yaml` in "
             "this folder (`mergekit-yaml mergekit.yaml OUT`), or with llama.cpp:", "",
             *fenced(llama_quantize_command(model_id, block), "bash")]
    if gguf := record.get("gguf"):
        lines += ["", f"A GGUF was exported with this model: {code(gguf['file'])} ({', '.join(gguf['tensor_types'])}; "
                      f"{'kept tensors copied unchanged from the source GGUF' if gguf['method'] == 'direct' else 'converted from these weights'})."]
    lines += ["", "## Versions", "", "| library | version |", "|---|---|"]
    lines += [f"| {library} | {version} |" for library, version in versions().items()]
    lines += ["", "The full record of the run is in `run.json`."]
    return "\n".join(lines) + "\n"

"""The Prune & heal page's computations: prune a block, optionally repair it, and put the models
side by side (held-out loss, task accuracy with its 95% interval, greedy completion); the finished
heal's table. Here, not in the page, so the page only draws and
the same numbers are testable without Streamlit.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd

from explorer.surgery.heal import HealConfig
from explorer.evaluation.agreement import agreement
from explorer.state.cache import cached_quick_eval
from explorer.evaluation.evaluate import quick_eval
from explorer.export.folder import save_prune
from explorer.lm.models import LoadedModel
from explorer.core.options import widget
from explorer.core.paths import explorer_home
from explorer.surgery.prune import PruneResult, prune_layers
from explorer.surgery.repair import LinearFit, RepairConfig, repair_block, repair_record
from explorer.lm.generate import complete
from explorer.lm.blocks import LayerSet
from explorer.core.errors import ExplorerError

PAGE_REPAIRS = ("none", "linear", "LoRA heal")  # the page's choice beside Prune
REPAIR_HELP = ("none: the block simply removed; linear: a map fitted on calibration text, folded into the layer before "
               "the block (no training); LoRA heal: train adapters (Start healing, a background job below).")
HEAL_WIDGETS = {"ph_steps": "steps", "ph_rank": "rank", "ph_alpha": "alpha", "ph_lr": "lr", "ph_batch": "batch_size",
                "ph_seq": "seq_len", "ph_every": "eval_every", "ph_qlora": "quantize", "ph_task": "eval_task",
                "ph_limit": "eval_limit", "ph_val": "val_samples", "ph_source": "source",
                "ph_targets": "targets"}  # the page's widget key -> HealConfig field
TARGET_NAMES = {"all-linear": "all linear projections", "ffn": "feed-forward modules only (the paper)"}  # HealConfig.targets
HEAL_LABELS = {key: widget(HealConfig, name) for key, name in HEAL_WIDGETS.items()}  # label and help, as the CLI's
HEAL_NUMBERS = tuple(  # the form's number inputs, in order: (widget key, label, number_input options with the help)
    (key, HEAL_LABELS[key]["label"], {**options, "help": HEAL_LABELS[key]["help"]}) for key, options in (
        ("ph_steps", {"min_value": 1}), ("ph_rank", {"min_value": 1}), ("ph_alpha", {"min_value": 1}),
        ("ph_lr", {"min_value": 1e-7, "format": "%.0e"}), ("ph_batch", {"min_value": 1}), ("ph_seq", {"min_value": 8, "step": 32}),
        ("ph_every", {"min_value": 1}), ("ph_limit", {"min_value": 1}), ("ph_val", {"min_value": 1})))


def heal_defaults(device: str, eval_task: str) -> dict:
    """The form's starting values: the demo HealConfig, QLoRA where CUDA runs it, the default task."""
    defaults = {**HealConfig().to_json(), "quantize": device == "cuda", "eval_task": eval_task}
    return {key: defaults[name] for key, name in HEAL_WIDGETS.items()}


def heal_widget_values(settings: dict) -> dict:
    """The form's values for a heal job's settings, so a reloaded page shows the run it follows."""
    heal = settings["heal"]
    return {**{key: heal[name] for key, name in HEAL_WIDGETS.items() if heal.get(name) is not None},
            "ph_start": settings["start"], "ph_n": settings["n"], "ph_allow_final": settings.get("allow_final", False),
            "ph_save_model": settings.get("save", False), "ph_dtype": settings.get("dtype") or "bf16"}


def recipe_widget_values(recipe) -> dict:
    """The form's training values for the paper's recipe (an explorer.surgery.recipe.PaperRecipe): the
    HealConfig fields the recipe sets; the evaluation settings stay the user's."""
    config, names = recipe.heal_config(), recipe.to_json().keys() & HealConfig.__dataclass_fields__.keys()
    return {key: getattr(config, name) for key, name in HEAL_WIDGETS.items() if name in names}


def recipe_caption(recipe: dict | None) -> str:
    """What the form says about the recipe it holds."""
    if not recipe:
        return "Defaults are a few-minute CPU demo; the button fills in the paper's recipe for this model."
    return (f"Paper recipe: {recipe['row_reason']}; LoRA on {', '.join(recipe['targets'])}; warm-up "
            f"{recipe['warmup_steps']} steps, dropout {recipe['dropout']}. The paper evaluates {recipe['evaluation']}.")


def heal_config(values: dict, recipe: dict | None) -> HealConfig:
    """The HealConfig of the form's values (widget key -> value); the recipe adds what the form does not show."""
    fields = {name: values[key] for key, name in HEAL_WIDGETS.items()}
    numbers = {HEAL_WIDGETS[key]: (float if key == "ph_lr" else int)(values[key]) for key, _, _ in HEAL_NUMBERS}
    extra = {"warmup_steps": recipe["warmup_steps"], "dropout": recipe["dropout"]} if recipe else {}
    return HealConfig(**{**fields, **numbers, **extra})


@dataclass
class Preview:
    """A pruned (and, with a linear repair, repaired) model and every model's numbers by name."""

    result: PruneResult  # the model a save writes: the repaired one when repaired
    rows: dict[str, dict]  # "unpruned", "pruned"[, "linear repair"] -> quick_eval + "completion"
    repair: RepairConfig | None = None
    fit: LinearFit | None = None

    def extra(self) -> dict:
        """What run.json adds to the block and parameter counts: the repair and every model's numbers."""
        return {"repair": repair_record(self.repair, self.fit) if self.repair else {"method": "none"},
                "quick_eval": {name: {k: v for k, v in row.items() if k != "completion"} for name, row in self.rows.items()}}

    def save(self, model_source: str, dtype: str | None = None) -> Path:
        """The model folder (run.json, the mergekit YAML of the slice; weights in `dtype`, default as
        loaded) under EXPLORER_HOME/pruned: export.save_prune, as the CLI's prune writes it."""
        folder = explorer_home() / "pruned" / self.result.loaded.fingerprint.replace(":", "-").replace("|", "_")
        return save_prune(self.result, folder, model_source, self.extra(), dtype)


def _numbers(loaded: LoadedModel, config: HealConfig, prompt: str) -> dict:
    return {**quick_eval(loaded, config), "completion": complete(loaded, prompt)}


def make_preview(loaded: LoadedModel, layers: LayerSet, config: HealConfig, prompt: str, repair: str = "none",
                 store=None, progress: Callable[[int, int, str], None] | None = None) -> Preview:
    """Prune a copy (any checked `LayerSet`) and measure it against the unpruned model (whose numbers
    are cached in `store` and shared with the heal jobs); with repair "linear" (one contiguous block)
    also the repaired copy, fitted on the healing text's calibration split with the evaluation's
    sequence length. `progress(i, total, label)` hears of each step before it runs (a minute or
    more on a busy CPU)."""
    if repair == "linear" and not layers.contiguous:
        raise ExplorerError(f"A linear repair replaces one contiguous block; {layers.describe()} is not one.")
    labels = ["pruning a copy", "evaluating the unpruned model (cached after the first time)",
              "evaluating the pruned model", *(["fitting the linear repair", "evaluating the repaired model"]
                                              if repair == "linear" else [])]

    def step(index: int) -> None:
        if progress:
            progress(index, len(labels), labels[index])

    step(0)
    pruned = prune_layers(loaded, layers)
    step(1)
    rows = {"unpruned": {**cached_quick_eval(loaded, config, store), "completion": complete(loaded, prompt)}}
    step(2)
    rows["pruned"] = _numbers(pruned.loaded, config, prompt)
    if repair != "linear":
        return Preview(pruned, rows)
    step(3)
    repair_config = RepairConfig(source=config.source, seq_len=config.seq_len, batch_size=config.eval_batch_size)
    repaired, fit = repair_block(loaded, layers.start, layers.n, repair_config, allow_final=layers.includes_final)
    step(4)
    rows["linear repair"] = _numbers(repaired.loaded, config, prompt)
    return Preview(repaired, rows, repair_config, fit)


def comparison_frame(rows: dict[str, dict]) -> pd.DataFrame:
    """One row per model: held-out loss, accuracy with its 95% interval, and how often it gives the
    unpruned model's answer (explorer.evaluation.agreement, with its interval), side by side."""
    reference = rows.get("unpruned", {}).get("predictions")

    def same(name: str, m: dict) -> str:
        found = m if m.get("agreement") is not None else agreement(m.get("predictions"), reference)
        if name == "unpruned" or found.get("agreement") is None:
            return "—"
        return f"{found['agreement']:.0%} [{found['agreement_ci_low']:.0%}, {found['agreement_ci_high']:.0%}]"

    return pd.DataFrame([
        {"model": name, "held-out loss": round(m["val_loss"], 3),
         f"accuracy ({m['task']})": f"{m['accuracy']:.0%} [{m['ci_low']:.0%}, {m['ci_high']:.0%}]",
         "same answer as unpruned": same(name, m)}
        for name, m in rows.items()
    ])


def heal_rows(result: dict) -> dict[str, dict]:
    """A finished heal run's three evaluations, named as in the preview's table."""
    metrics = result.get("metrics", {})
    names = {"before_pruning": "unpruned", "after_pruning": "pruned", "healed": "LoRA healed"}
    return {label: metrics[key] for key, label in names.items() if key in metrics}

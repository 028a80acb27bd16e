"""The Prune & heal page's computations: prune a block, optionally repair it, and put the models
side by side (held-out loss, task accuracy with its 95% interval, greedy completion); the finished
heal's table. Here, not in the page, so the page only draws and
the same numbers are testable without Streamlit.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import pandas as pd

from explorer.core.errors import ExplorerError
from explorer.core.options import widget
from explorer.core.paths import explorer_home
from explorer.evaluation.accuracy import generation_part, question_count, with_n
from explorer.evaluation.agreement import agreement
from explorer.evaluation.evaluate import quick_eval
from explorer.export.folder import block_record, save_prune
from explorer.export.gguf import GGUF_FILE, export_gguf
from explorer.lm.blocks import LayerSet, recorded_layers
from explorer.lm.data import source_fingerprint
from explorer.lm.generate import complete
from explorer.lm.models import LoadedModel
from explorer.state.cache import cached_quick_eval
from explorer.state.store import Run, Store
from explorer.surgery.heal import HealConfig
from explorer.surgery.prune import PruneResult, prune_layers
from explorer.surgery.repair import LinearFit, RepairConfig, prune_or_repair, repair_block, repair_record

PAGE_REPAIRS = ("none", "linear", "LoRA heal")  # the page's choice beside Prune
REPAIR_HELP = ("none: the block simply removed; linear: a map fitted on calibration text, folded into the layer before "
               "the block (no training); LoRA heal: train adapters (Start healing, a background job below).")
HEAL_WIDGETS = {"ph_steps": "steps", "ph_rank": "rank", "ph_alpha": "alpha", "ph_lr": "lr", "ph_batch": "batch_size",
                "ph_seq": "seq_len", "ph_every": "eval_every", "ph_qlora": "quantize", "ph_task": "eval_task",
                "ph_limit": "eval_limit", "ph_val": "val_samples", "ph_source": "source",
                "ph_targets": "targets", "ph_objective": "objective", "ph_data": "data", "ph_last_layers": "last_layers",
                "ph_temperature": "temperature", "ph_kl_weight": "kl_weight",
                "ph_prompt_tokens": "prompt_tokens"}  # the page's widget key -> HealConfig field
TARGET_NAMES = {"all-linear": "LoRA, all linear projections", "ffn": "LoRA, feed-forward modules only (the paper)",
                "last-layers": "last K layers + LM head, full fine-tuning"}  # HealConfig.targets
OBJECTIVE_NAMES = {"nll": "next-token loss (the paper)", "kl": "distill from the unpruned model (KL)",
                   "nll+kl": "both, weighted"}  # HealConfig.objective
DATA_NAMES = {"text": "the healing text", "self": "the unpruned model's own continuations"}  # HealConfig.data
HEAL_LABELS = {key: widget(HealConfig, name) for key, name in HEAL_WIDGETS.items()}  # label and help, as the CLI's
HEAL_NUMBERS = tuple(  # the form's number inputs, in order: (widget key, label, number_input options with the help)
    (key, HEAL_LABELS[key]["label"], {**options, "help": HEAL_LABELS[key]["help"]}) for key, options in (
        ("ph_steps", {"min_value": 1}), ("ph_rank", {"min_value": 1}), ("ph_alpha", {"min_value": 1}),
        ("ph_lr", {"min_value": 1e-7, "format": "%.0e"}), ("ph_batch", {"min_value": 1}), ("ph_seq", {"min_value": 8, "step": 32}),
        ("ph_every", {"min_value": 1}), ("ph_limit", {"min_value": 1}), ("ph_val", {"min_value": 1})))
DISTILL_NUMBERS = tuple(  # the objective panel's number inputs (pages/panels/heal_objective.py), as HEAL_NUMBERS
    (key, HEAL_LABELS[key]["label"], {**options, "help": HEAL_LABELS[key]["help"]}) for key, options in (
        ("ph_last_layers", {"min_value": 1}), ("ph_temperature", {"min_value": 0.05, "step": 0.5, "format": "%.2f"}),
        ("ph_kl_weight", {"min_value": 0.0, "max_value": 1.0, "step": 0.1}), ("ph_prompt_tokens", {"min_value": 1, "step": 8})))
FLOAT_WIDGETS = ("ph_lr", "ph_temperature", "ph_kl_weight")  # number inputs holding floats; the others hold ints


def heal_defaults(device: str, eval_task: str) -> dict:
    """The form's starting values: the demo HealConfig, QLoRA where CUDA runs it, the default task."""
    defaults = {**HealConfig().to_json(), "quantize": device == "cuda", "eval_task": eval_task}
    return {key: defaults[name] for key, name in HEAL_WIDGETS.items()}


def heal_widget_values(settings: dict) -> dict:
    """The form's values for a heal job's settings, so a reloaded page shows the run it follows."""
    heal = settings["heal"]
    return {**{key: heal[name] for key, name in HEAL_WIDGETS.items() if heal.get(name) is not None},
            "ph_start": settings["start"], "ph_n": settings["n"], "ph_allow_final": settings.get("allow_final", False),
            "ph_save_model": settings.get("save", False), "ph_dtype": settings.get("dtype") or "bf16",
            **({"ph_repair": "linear"} if settings.get("repair") else {})}


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
    numbers = {HEAL_WIDGETS[key]: (float if key in FLOAT_WIDGETS else int)(values[key])
               for key, _, _ in HEAL_NUMBERS + DISTILL_NUMBERS}
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

    def save(self, model_source: str, dtype: str | None = None, gguf: bool = False) -> Path:
        """The model folder (run.json, the mergekit YAML of the slice, the model card; weights in
        `dtype`, default as loaded) under EXPLORER_HOME/pruned: export.save_prune, as the CLI's prune
        writes it. `gguf` adds model.gguf (explorer.export.gguf.export_gguf: copied from a GGUF source
        when only layers went, else converted), written first so the card describes it."""
        folder = explorer_home() / "pruned" / self.result.loaded.fingerprint.replace(":", "-").replace("|", "_")
        extra = self.extra()
        if gguf:
            extra["gguf"] = export_gguf(model_source, folder / GGUF_FILE, self.result.block, self.result.loaded,
                                        weights_changed=self.repair is not None).to_json()
        else:  # an earlier save's GGUF may be of another repair of this block: the folder holds one model
            (folder / GGUF_FILE).unlink(missing_ok=True)
        return save_prune(self.result, folder, model_source, extra, dtype)

    def to_json(self) -> dict:
        """The "preview" run's result: the block, the parameter counts and every model's numbers, so a
        reload shows the comparison again without recomputing it."""
        block = self.result.block
        return {"block": block_record(block), "describe": block.describe(self.result.removed_params),
                "params_before": self.result.params_before, "params_after": self.result.params_after,
                "rows": self.rows, **self.extra()}


def preview_settings(loaded: LoadedModel, layers: LayerSet, config: HealConfig, prompt: str, repair: str) -> dict:
    """What a preview's numbers depend on (its store key digests these with the model's fingerprint)."""
    return {"layers": block_record(layers), "evaluation": asdict(config.evaluation()), "prompt": prompt, "repair": repair,
            "source_fingerprint": source_fingerprint(config.source)}


def preview_run(loaded: LoadedModel, layers: LayerSet, config: HealConfig, prompt: str, repair: str, store: Store,
                progress: Callable[[int, int, str], None] | None = None) -> tuple[int, dict, bool]:
    """(run id, result, from the store) of the Prune page's comparison, kept as a "preview" run keyed
    by the model's fingerprint and its settings: a reload reattaches to it, and identical requests
    from several sessions are computed once (Store.cached)."""
    settings = preview_settings(loaded, layers, config, prompt, repair)
    digest = hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return store.cached("preview", f"{loaded.fingerprint}|{digest}", loaded.name, settings,
                        lambda: make_preview(loaded, layers, config, prompt, repair, store, progress).to_json())


def rebuilt_preview(loaded: LoadedModel, run: Run) -> Preview:
    """The Preview a stored "preview" run measured, its model pruned again (and, for a linear repair,
    refitted: the fit is deterministic) from the run's settings, with the run's numbers: what Save
    writes, without measuring anything again. Only on demand (a Save), never to draw the page."""
    s = run.settings
    repair = (RepairConfig(source=s["evaluation"]["source"], seq_len=s["evaluation"]["seq_len"],
                           batch_size=s["evaluation"]["eval_batch_size"]) if s["repair"] == "linear" else None)
    result, fit = prune_or_repair(loaded, recorded_layers(s["layers"]), repair)
    return Preview(result, run.result["rows"], repair, fit)


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
    """One row per model: held-out loss, accuracy with its 95% interval (and by generation, when the
    evaluation scored a generation task), and how often it gives the unpruned model's answer
    (explorer.evaluation.agreement, with its interval), side by side."""
    reference = rows.get("unpruned", {}).get("predictions")

    def same(name: str, m: dict) -> str:
        found = m if m.get("agreement") is not None else agreement(m.get("predictions"), reference)
        if name == "unpruned" or found.get("agreement") is None:
            return "—"
        return f"{found['agreement']:.0%} [{found['agreement_ci_low']:.0%}, {found['agreement_ci_high']:.0%}]"

    def generated(m: dict) -> dict:  # the generation task's accuracy, when the evaluation scored one
        if m.get("gen_accuracy") is None:
            return {}
        gen = generation_part(m)
        return {f"by generation ({gen['task']})": with_n(f"{gen['accuracy']:.0%} [{gen['ci_low']:.0%}, {gen['ci_high']:.0%}]", gen)}

    return pd.DataFrame([
        {"model": name, "held-out loss": round(m["val_loss"], 3),
         f"accuracy ({m['task']})": f"{m['accuracy']:.0%} [{m['ci_low']:.0%}, {m['ci_high']:.0%}]",
         "questions (n)": question_count(m), **generated(m), "same answer as unpruned": same(name, m)}
        for name, m in rows.items()
    ])


def preview_headline(run: Run) -> str | None:
    """The Runs page's line for a preview: what was removed and the last model's accuracy with its n."""
    rows = (run.result or {}).get("rows")
    if not rows:
        return None
    name, last = list(rows.items())[-1]
    return (f"{run.result['describe']}: {name} accuracy {last['accuracy']:.2f} [{last['ci_low']:.2f}, "
            f"{last['ci_high']:.2f}], n = {question_count(last)}")


def preview_table(run: Run, events: list[dict]) -> pd.DataFrame | None:
    return comparison_frame(run.result["rows"]) if (run.result or {}).get("rows") else None


def preview_caption(result: dict) -> str:
    """What the comparison table's numbers are, under it: the interval, chance, and the linear fit."""
    after = list(result["rows"].values())[-1]
    fit = (result.get("repair") or {}).get("fit")
    return (f"Accuracy with its 95% Wilson interval on n questions; chance {after['chance']:.0%}; the completion is greedy."
            + (f" Linear repair folded into layer {fit['layer']}: held-out relative residual {fit['heldout_residual']:.2f} "
               f"(unrepaired {fit['heldout_residual_unrepaired']:.2f})." if fit else ""))


def heal_rows(result: dict) -> dict[str, dict]:
    """A finished heal run's three evaluations, named as in the preview's table."""
    metrics = result.get("metrics", {})
    names = {"before_pruning": "unpruned", "after_pruning": "pruned", "healed": "LoRA healed"}
    return {label: metrics[key] for key, label in names.items() if key in metrics}

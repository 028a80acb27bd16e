"""The Prune & heal page's computations: prune a block, optionally repair it, and put the models
side by side (held-out loss, task accuracy with its 95% interval, greedy completion); the live
heal figure and the finished heal's table. Here, not in the page, so the page only draws and
the same numbers are testable without Streamlit.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from explorer.heal import HealConfig, cached_quick_eval, complete, quick_eval
from explorer.agreement import agreement
from explorer.export import mergekit_yaml, save_pruned
from explorer.models import LoadedModel
from explorer.paths import explorer_home
from explorer.prune import PruneResult, prune_block
from explorer.repair import LinearFit, RepairConfig, repair_block, repair_record
from explorer.similarity import SimilarityResult, similarity_key

PAGE_REPAIRS = ("none", "linear", "LoRA heal")  # the page's choice beside Prune


@dataclass
class Preview:
    """A pruned (and, with a linear repair, repaired) model and every model's numbers by name."""

    result: PruneResult  # the model a save writes: the repaired one when repaired
    rows: dict[str, dict]  # "unpruned", "pruned"[, "linear repair"] -> quick_eval + "completion"
    repair: RepairConfig | None = None
    fit: LinearFit | None = None

    def record(self, model_source: str) -> dict:
        """run.json of a saved preview model."""
        block = self.result.block
        return {"kind": "prune", "model": model_source, "model_name": self.result.loaded.name,
                "block": {"start": block.start, "n": block.n, "num_layers": block.num_layers, "removed": block.removed},
                "params_before": self.result.params_before, "params_after": self.result.params_after,
                "repair": repair_record(self.repair, self.fit) if self.repair else {"method": "none"},
                "quick_eval": {name: {k: v for k, v in row.items() if k != "completion"} for name, row in self.rows.items()}}

    def save(self, model_source: str) -> Path:
        """The model folder (with run.json and the mergekit YAML of the slice) under EXPLORER_HOME/pruned."""
        loaded, block = self.result.loaded, self.result.block
        folder = explorer_home() / "pruned" / loaded.fingerprint.replace(":", "-").replace("|", "_")
        out = save_pruned(loaded, folder, self.record(model_source))
        (out / "mergekit.yaml").write_text(mergekit_yaml(model_source, block.num_layers, block))
        return out


def latest_similarity(loaded: LoadedModel, store) -> SimilarityResult | None:
    """The newest finished heatmap of this model (any text settings), for the similarity strategy."""
    prefix = similarity_key(loaded, "")
    runs = [r for r in store.list_runs("similarity", "done") if (r.cache_key or "").startswith(prefix)]
    return SimilarityResult.from_json(runs[0].result) if runs else None


def _numbers(loaded: LoadedModel, config: HealConfig, prompt: str) -> dict:
    return {**quick_eval(loaded, config), "completion": complete(loaded, prompt)}


def make_preview(loaded: LoadedModel, start: int, n: int, allow_final: bool, config: HealConfig, prompt: str,
                 repair: str = "none", store=None) -> Preview:
    """Prune a copy and measure it against the unpruned model (whose numbers are cached in `store`
    and shared with the heal jobs); with repair "linear" also the repaired copy, fitted on the
    healing text's calibration split with the evaluation's sequence length."""
    pruned = prune_block(loaded, start, n, allow_final=allow_final)
    rows = {"unpruned": {**cached_quick_eval(loaded, config, store), "completion": complete(loaded, prompt)},
            "pruned": _numbers(pruned.loaded, config, prompt)}
    if repair != "linear":
        return Preview(pruned, rows)
    repair_config = RepairConfig(source=config.source, seq_len=config.seq_len, batch_size=config.eval_batch_size)
    repaired, fit = repair_block(loaded, start, n, repair_config, allow_final=allow_final)
    rows["linear repair"] = _numbers(repaired.loaded, config, prompt)
    return Preview(repaired, rows, repair_config, fit)


def comparison_frame(rows: dict[str, dict]) -> pd.DataFrame:
    """One row per model: held-out loss, accuracy with its 95% interval, and how often it gives the
    unpruned model's answer (explorer.agreement, with its interval), side by side."""
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


def heal_figure(events: list[dict], steps: int) -> go.Figure:
    """Train/val loss and accuracy (Wilson band, chance) against step, with the unpruned
    ("before pruning") and step-0 ("after pruning") levels as reference lines."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("Loss", "Accuracy"), horizontal_spacing=0.08)
    train = [e for e in events if e.get("kind") == "train"]
    evals = [e for e in events if e.get("kind") == "eval"]
    reference = next((e for e in events if e.get("kind") == "reference"), None)
    after = next((e for e in evals if e["step"] == 0 and not e.get("merged")), None)
    fig.add_scatter(x=[e["step"] for e in train], y=[e["train_loss"] for e in train], mode="lines+markers",
                    name="train loss", marker_size=4, row=1, col=1)
    fig.add_scatter(x=[e["step"] for e in evals], y=[e["val_loss"] for e in evals], mode="lines+markers",
                    name="held-out loss", marker_size=8, row=1, col=1)
    if evals:
        steps_x = [e["step"] for e in evals]
        fig.add_scatter(x=steps_x + steps_x[::-1], y=[e["ci_high"] for e in evals] + [e["ci_low"] for e in evals][::-1],
                        mode="lines", fill="toself", fillcolor="rgba(44,160,44,0.15)", line_width=0, hoverinfo="skip",
                        name="95% Wilson interval", row=1, col=2)
        fig.add_scatter(x=steps_x, y=[e["accuracy"] for e in evals], mode="lines+markers", name="accuracy",
                        marker_size=8, line_color="rgb(44,160,44)", row=1, col=2)
        fig.add_hline(y=evals[0]["chance"], line_dash="dot", line_color="gray", annotation_text="chance", row=1, col=2)
    for label, point, color in (("before pruning", reference, "black"), ("after pruning", after, "crimson")):
        if point:
            fig.add_hline(y=point["val_loss"], line_dash="dash", line_color=color, annotation_text=label, row=1, col=1)
            fig.add_hline(y=point["accuracy"], line_dash="dash", line_color=color, annotation_text=label, row=1, col=2)
    fig.update_xaxes(title_text="step", range=[-0.5, steps + 0.5])
    fig.update_yaxes(range=[0, 1], tickformat=".0%", row=1, col=2)
    fig.update_layout(height=420, margin=dict(t=40, b=40, l=40, r=20), legend=dict(orientation="h", y=-0.2))
    return fig

"""The live healing figure: train/held-out loss and accuracy against step, with the unpruned and
the just-pruned levels as reference lines (what the Prune & heal page draws while a job runs)."""

from __future__ import annotations

import plotly.graph_objects as go

from explorer.views.figures.style import GREEN, finish_panels, loss_accuracy_panels, rgba


def heal_figure(events: list[dict], steps: int) -> go.Figure:
    """Train/val loss and accuracy (Wilson band, chance) against step, with the unpruned
    ("before pruning") and step-0 ("after pruning") levels as reference lines; the generation
    task's accuracy dashed beside it when the heal scores one."""
    fig = loss_accuracy_panels("Loss")
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
                        mode="lines", fill="toself", fillcolor=rgba(GREEN, 0.15), line_width=0, hoverinfo="skip",
                        name="95% Wilson interval", row=1, col=2)
        fig.add_scatter(x=steps_x, y=[e["accuracy"] for e in evals], mode="lines+markers", name="accuracy",
                        marker_size=8, line_color=GREEN, row=1, col=2)
        fig.add_hline(y=evals[0]["chance"], line_dash="dot", line_color="gray", annotation_text="chance", row=1, col=2)
        generated = [e for e in evals if e.get("gen_accuracy") is not None]
        if generated:  # the generation task's accuracy beside the likelihood task's
            fig.add_scatter(x=[e["step"] for e in generated], y=[e["gen_accuracy"] for e in generated], mode="lines+markers",
                            name=f"accuracy by generation ({generated[0]['gen_task']})", marker_size=8,
                            line=dict(color=GREEN, dash="dash"), row=1, col=2)
    for label, point, color in (("before pruning", reference, "black"), ("after pruning", after, "crimson")):
        if point:
            fig.add_hline(y=point["val_loss"], line_dash="dash", line_color=color, annotation_text=label, row=1, col=1)
            fig.add_hline(y=point["accuracy"], line_dash="dash", line_color=color, annotation_text=label, row=1, col=2)
    return finish_panels(fig, 420, -0.2, title_text="step", range=[-0.5, steps + 0.5])

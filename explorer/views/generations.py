"""The side-by-side generation pane (Prune & heal page): the same prompts completed by the unpruned,
pruned, linearly repaired and LoRA-healed models, greedy, so a reader sees what each step did to the
model's writing; and the plain verdict on a repair judged by the held-out loss of the evaluation text.
Page-shaped data only: the panel (pages/panels/generations.py) draws it."""

from __future__ import annotations

import pandas as pd

from explorer.core.errors import ExplorerError
from explorer.evaluation.evaluate import run_task
from explorer.lm.generate import Decoding, generate
from explorer.lm.models import LoadedModel
from explorer.views.runs import source_name

DEFAULT_PROMPTS = ("The capital of France is", "Question: What is 7 + 5?\nAnswer:", "Once upon a time, in a small village,",
                   "The three primary colours are")
MAX_PROMPTS = 8
NEW_TOKENS = 32


def prompt_lines(text: str) -> list[str]:
    """The pane's prompts: one a line (a literal "\\n" in a line stands for a newline), blank lines
    skipped, at most MAX_PROMPTS."""
    prompts = [line.replace("\\n", "\n") for line in text.splitlines() if line.strip()]
    if not prompts:
        raise ExplorerError("Give at least one prompt (one a line).")
    if len(prompts) > MAX_PROMPTS:
        raise ExplorerError(f"Give at most {MAX_PROMPTS} prompts (got {len(prompts)}): each model completes every one.")
    return prompts


def side_by_side(models: dict[str, LoadedModel], prompts: list[str], new_tokens: int = NEW_TOKENS,
                 batch_size: int = 8) -> pd.DataFrame:
    """One row per prompt, one column per model: its greedy completion up to the end of sequence or
    `new_tokens` tokens."""
    decoding = Decoding(max_new_tokens=new_tokens)
    columns = {name: [g.text for g in generate(model, prompts, decoding, batch_size)] for name, model in models.items()}
    return pd.DataFrame({"prompt": prompts, **columns})


def generative_scores(models: dict[str, LoadedModel], task: str, limit: int, batch_size: int = 8) -> pd.DataFrame:
    """One row per model: its accuracy by generation on `task` (95% Wilson interval) and its first
    answer as written, the same questions for every model."""
    rows = []
    for name, model in models.items():
        report = run_task(model, task, limit, batch_size)
        first = report.per_question[0]
        rows.append({"model": name, f"accuracy by generation ({task})": f"{report.accuracy:.0%} [{report.ci_low:.0%}, "
                     f"{report.ci_high:.0%}]", "first answer written": first.output, "gold": first.gold})
    return pd.DataFrame(rows)


def repair_verdict(rows: dict[str, dict], source: str) -> tuple[str, bool] | None:
    """(a sentence on the linear repair's effect on the evaluation text's held-out loss, whether it
    hurt), or None without a repaired row. The repair is fitted on calibration documents; on other
    text it can raise the loss, and the user's own text is the one that counts."""
    pruned, repaired = rows.get("pruned"), rows.get("linear repair")
    if not pruned or not repaired:
        return None
    before, after = pruned["val_loss"], repaired["val_loss"]
    where = "the embedded news corpus" if source == "embedded" else source_name(source)
    if after > before:
        return (f"The linear repair made the held-out loss on {where} worse: {before:.3f} pruned, {after:.3f} repaired. "
                "On this text, keep the plain pruned model or heal it instead.", True)
    return f"The linear repair lowered the held-out loss on {where}: {before:.3f} pruned, {after:.3f} repaired.", False

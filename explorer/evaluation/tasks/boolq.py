"""BoolQ (Clark et al. 2019) yes/no reading comprehension, scored by lm-eval itself.

Online it is lm-eval's own `boolq` task (aps/super_glue from the Hugging Face hub); offline it
reads a local JSONL with question, passage and answer per line (Google's release format)
through the same prompt. lm-eval is the scorer here because BoolQ is one of the paper's
benchmarks and runs where comparability with published numbers matters more than speed.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

from explorer.lm.models import LoadedModel
from explorer.evaluation.tasks import QuestionResult, register

LABELS = ("no", "yes")
HUB_DATASET = "aps/super_glue"  # what lm-eval's boolq task loads


class BoolQTask:
    name = "boolq"
    chance = 0.5  # random guessing between two answers (always "yes" gets ~62% on the validation split)
    metric = "acc"

    def __init__(self, boolq_file: str | Path | None = None):
        from explorer.lm.data import check_hub_dataset
        from explorer.evaluation.lmeval import read_boolq

        self.boolq_file = boolq_file
        version = importlib.metadata.version("lm_eval")
        if boolq_file is None:
            check_hub_dataset(HUB_DATASET, "pass a local BoolQ JSONL with question, passage and answer per line (boolq_file)")
            self.source = f"BoolQ validation ({HUB_DATASET} via lm-eval {version}, online)"
        else:
            rows = read_boolq(boolq_file)  # fail on a bad file now, before any model work
            self.source = f"BoolQ from {Path(boolq_file).expanduser()} ({len(rows)} questions, lm-eval {version})"

    def score(self, loaded: LoadedModel, limit: int | None = None, batch_size: int = 8) -> list[QuestionResult]:
        from explorer.evaluation.lmeval import run_lmeval, write_boolq_task

        task = "boolq" if self.boolq_file is None else write_boolq_task(self.boolq_file)
        result = run_lmeval(loaded, [task], limit=limit, batch_size=batch_size)
        return [
            QuestionResult(f"boolq/{p['doc_id']}", LABELS[p["pred"]], LABELS[p["gold"]], p["loglikelihoods"])
            for p in result["predictions"][task]
        ]


register(BoolQTask.name, BoolQTask)

"""BoolQ (Clark et al. 2019) yes/no reading comprehension, scored by lm-eval itself.

Online it is lm-eval's own `boolq` task (aps/super_glue from the Hugging Face hub); offline it
reads a local JSONL with question, passage and answer per line (Google's release format)
through the same prompt. lm-eval is the scorer here because BoolQ is one of the paper's
benchmarks and runs where comparability with published numbers matters more than speed.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

from explorer.core.errors import ExplorerError
from explorer.evaluation.lmeval import lmeval_folder, run_lmeval, template, write_config, write_jsonl
from explorer.evaluation.questions import QuestionResult
from explorer.evaluation.tasks import register
from explorer.lm.data import check_hub_dataset, jsonl_records
from explorer.lm.models import LoadedModel

LABELS = ("no", "yes")
HUB_DATASET = "aps/super_glue"  # what lm-eval's boolq task loads


class BoolQTask:
    name = "boolq"
    chance = 0.5  # random guessing between two answers (always "yes" gets ~62% on the validation split)
    metric = "acc"

    def __init__(self, boolq_file: str | Path | None = None):
        self.boolq_file = boolq_file
        version = importlib.metadata.version("lm_eval")
        if boolq_file is None:
            check_hub_dataset(HUB_DATASET, "pass a local BoolQ JSONL with question, passage and answer per line (boolq_file)")
            self.source = f"BoolQ validation ({HUB_DATASET} via lm-eval {version}, online)"
        else:
            rows = read_boolq(boolq_file)  # fail on a bad file now, before any model work
            self.source = f"BoolQ from {Path(boolq_file).expanduser()} ({len(rows)} questions, lm-eval {version})"

    def score(self, loaded: LoadedModel, limit: int | None = None, batch_size: int = 8) -> list[QuestionResult]:
        task = "boolq" if self.boolq_file is None else write_boolq_task(self.boolq_file)
        result = run_lmeval(loaded, [task], limit=limit, batch_size=batch_size)
        return [
            QuestionResult(f"boolq/{p['doc_id']}", LABELS[p["pred"]], LABELS[p["gold"]], p["loglikelihoods"])
            for p in result["predictions"][task]
        ]


def _boolq_label(value, where: str) -> int:
    text = str(value).strip().lower()
    if text in ("true", "yes", "1"):
        return 1
    if text in ("false", "no", "0"):
        return 0
    raise ExplorerError(f"{where}: answer {value!r} is not true/false or yes/no.")


def read_boolq(path: str | Path) -> list[dict]:
    """A BoolQ JSONL (question, passage, answer per line, as Google's BoolQ release ships it),
    checked line by line; rows come back with a 0/1 `label` as lm-eval's boolq expects."""
    return [{"question": row["question"], "passage": row["passage"], "label": _boolq_label(row.get("answer"), where)}
            for where, row in jsonl_records(path, "BoolQ", ("question", "passage"))]


def write_boolq_task(path: str | Path, folder: Path | None = None) -> str:
    folder = folder or lmeval_folder()
    task = "explorer_boolq"
    data = folder / task / f"{task}.jsonl"
    write_jsonl(data, read_boolq(path))
    config = {"task": task, **template("boolq_local.yaml"), "dataset_kwargs": {"data_files": {"validation": str(data)}}}
    return write_config(folder, config)


register(BoolQTask.name, BoolQTask)

"""lm-evaluation-harness on an in-memory model, online (its own `mmlu`, `boolq`, ...) or offline
from task configs we write: local MMLU CSVs, a local BoolQ JSONL, and the knowledge quizzes.

Full runs and cross-checks use lm-eval because it is the reference users trust; our scorers
(explorer.evaluation.scoring) are faster and must give the same per-question predictions, which the tests
check. A pruned or healing model is wrapped as it is (`HFLM(pretrained=model, tokenizer=...)`),
never saved and reloaded.

Offline task configs are filled by each task module (tasks/mmlu, tasks/quiz, tasks/boolq) from the
templates in lmeval_tasks/ beside this file and written, with any data they need, under
`$EXPLORER_HOME/lmeval/<task>/`. That folder is a valid lm-eval `--include_path`, so the same tasks also run from lm-eval's own CLI.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path

import yaml

from explorer.core.errors import ExplorerError
from explorer.core.files import write_text
from explorer.core.paths import explorer_home
from explorer.evaluation.questions import check_limit
from explorer.evaluation.scoring import cloze_picks
from explorer.lm.forward import inference
from explorer.lm.models import LoadedModel

TEMPLATES = Path(__file__).parent / "lmeval_tasks"


def lmeval_folder() -> Path:
    """Where generated task configs and data live (an lm-eval include path)."""
    return explorer_home() / "lmeval"


def template(name: str) -> dict:
    return yaml.safe_load((TEMPLATES / name).read_text())


def write_config(folder: Path, config: dict) -> str:
    write_text(folder / config["task"] / f"{config['task']}.yaml", yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    return config["task"]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def _task_manager(tasks: list[str], include_path: str | Path | None):
    """Index only our generated folder when it has every task (0.05 s); lm-eval's full index of
    ~15k built-in configs takes seconds, so it is built only for tasks such as `mmlu`."""
    from lm_eval.tasks import TaskManager  # deferred: lm-eval (seconds to import) loads only for lm-eval runs

    paths = [str(p) for p in (include_path or lmeval_folder(),) if Path(p).is_dir()]
    if paths:
        local = TaskManager(include_path=paths, include_defaults=False)
        if all(task in local.all_tasks for task in tasks):
            return local
    manager = TaskManager(include_path=paths or None)
    for task in tasks:
        if task not in manager.all_tasks:
            close = difflib.get_close_matches(task, manager.all_tasks, n=3)
            hint = f": did you mean {', '.join(close)}?" if close else "."
            raise ExplorerError(f"lm-eval has no task '{task}'{hint}")
    return manager


def _load_tasks(manager, tasks: list[str]) -> list:
    """Build the tasks (this is where lm-eval loads their datasets), one clear error if it cannot."""
    built = []
    for name in tasks:
        try:
            loaded = manager.load(name)
        except Exception as exc:  # offline hub, missing files and bad configs arrive as many types
            reason = str(exc).splitlines()[0] if str(exc) else ""
            raise ExplorerError(
                f"lm-eval could not load task '{name}' ({type(exc).__name__}: {reason}): offline? "
                "Use a local source (MMLU CSV folder, BoolQ JSONL), or check the files its config names."
            ) from exc
        groups, leaves = loaded.get("groups", {}), loaded["tasks"]
        if name in groups:
            built.append(groups[name])
        elif name in leaves:
            built.append(leaves[name])
        else:  # a tag: every task it names
            built.extend(leaves.values())
    return built


def predictions(sample: dict, target_delimiter: str = " ") -> dict:
    """Our per-question view of one lm-eval logged sample: the raw pick (lm-eval's `acc`), the
    length-normalized pick (`acc_norm`), the gold index and the per-choice log-likelihoods."""
    logprobs = [float(resp[0]) for resp in sample["filtered_resps"]]
    choices = [args[1][len(target_delimiter):] for args in sample["arguments"]]
    normalized, raw = cloze_picks(choices, logprobs)
    target = sample["target"]
    gold = choices.index(target) if isinstance(target, str) else int(target)
    return {"doc_id": sample["doc_id"], "pred": raw, "pred_norm": normalized, "gold": gold, "loglikelihoods": logprobs}


def generation(sample: dict) -> dict:
    """Our per-question view of one logged sample of a generate_until task: the generated text as
    lm-eval returns it (cut at the stop strings, before lm-eval's own answer filters)."""
    return {"doc_id": sample["doc_id"], "output": sample["resps"][0][0], "target": sample["target"]}


def run_lmeval(
    loaded: LoadedModel,
    tasks: list[str],
    limit: int | None = None,
    num_fewshot: int | None = None,
    include_path: str | Path | None = None,
    batch_size: int = 8,
    lm_class: type | None = None,
) -> dict:
    """Run lm-eval tasks (names of lm-eval tasks or groups, or of tasks written by the
    `write_*` functions above) on the loaded model, in this process.

    Returns lm-eval's result dict (`results`, `configs`, `samples`, ...) plus `predictions`:
    {task: [predictions(sample) per question, in document order]} (`generation(sample)` for a
    generate_until task). `limit` takes the first questions of each task; `num_fewshot` None keeps
    each task's own setting. `lm_class`: HFLM or a subclass of it (the tests record its tokens).
    """
    check_limit(limit)
    if not tasks:
        raise ExplorerError("No lm-eval task given.")
    from lm_eval import simple_evaluate  # deferred: lm-eval (seconds to import) loads only for lm-eval runs
    from lm_eval.models.huggingface import HFLM  # deferred: lm-eval (seconds to import) loads only for lm-eval runs

    manager = _task_manager(tasks, include_path)
    built = _load_tasks(manager, tasks)
    with inference(loaded.model):
        lm = (lm_class or HFLM)(pretrained=loaded.model, tokenizer=loaded.tokenizer, batch_size=batch_size)
        results = simple_evaluate(
            model=lm, tasks=built, task_manager=manager, limit=limit, num_fewshot=num_fewshot,
            log_samples=True, bootstrap_iters=0,
        )
    results["predictions"] = {
        task: [generation(s) if results["configs"][task].get("output_type") == "generate_until"
               else predictions(s, results["configs"][task].get("target_delimiter", " ")) for s in samples]
        for task, samples in results["samples"].items()
    }
    return results

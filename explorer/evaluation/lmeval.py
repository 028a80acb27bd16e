"""lm-evaluation-harness on an in-memory model, online (its own `mmlu`, `boolq`, ...) or offline
from task configs we write: local MMLU CSVs, a local BoolQ JSONL, and the knowledge quizzes.

Full runs and cross-checks use lm-eval because it is the reference users trust; our scorers
(explorer.evaluation.scoring) are faster and must give the same per-question predictions, which the tests
check. A pruned or healing model is wrapped as it is (`HFLM(pretrained=model, tokenizer=...)`),
never saved and reloaded.

Offline task configs are filled from the templates in explorer/lmeval_tasks/ and written, with
any data they need, under `$EXPLORER_HOME/lmeval/<task>/`. That folder is a valid lm-eval
`--include_path`, so the same tasks also run from lm-eval's own CLI.
"""

from __future__ import annotations

import csv
import difflib
import json
import os
from pathlib import Path

import yaml

from explorer.lm.data import jsonl_values
from explorer.core.errors import ExplorerError
from explorer.lm.models import LoadedModel
from explorer.core.paths import explorer_home
from explorer.evaluation.scoring import cloze_picks, inference
from explorer.evaluation.tasks import check_limit

TEMPLATES = Path(__file__).parent / "lmeval_tasks"
MMLU_COLUMNS = ["question", "choice0", "choice1", "choice2", "choice3", "answer"]


def lmeval_folder() -> Path:
    """Where generated task configs and data live (an lm-eval include path)."""
    return explorer_home() / "lmeval"


def _template(name: str) -> dict:
    return yaml.safe_load((TEMPLATES / name).read_text())


def _write_atomic(path: Path, text: str) -> None:
    """Write then rename, so a concurrent lm-eval index build never reads half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_name(f".{path.name}.{os.getpid()}")
    scratch.write_text(text, encoding="utf-8")
    scratch.replace(path)


def _write_config(folder: Path, config: dict) -> str:
    _write_atomic(folder / config["task"] / f"{config['task']}.yaml", yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    return config["task"]


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    _write_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def quiz_task_name(name: str) -> str:
    """lm-eval task name of a quiz, e.g. quiz-capitals -> explorer_quiz_capitals."""
    return "explorer_" + name.replace("-", "_")


def write_quiz_task(name: str, seed: int = 0, shots: int | None = None, folder: Path | None = None) -> str:
    """Write a quiz's questions (test split, in our scoring order) and its few-shot
    demonstrations (train split, taken in order by lm-eval's first_n sampler) as JSONL, and its
    config; returns the lm-eval task name. Prompts and demonstrations equal our scorer's, with
    the same default number of shots."""
    from explorer.evaluation.tasks.quiz import DEFAULT_SHOTS, QUIZZES, split

    if name not in QUIZZES:
        raise ExplorerError(f"Unknown quiz '{name}': choose one of {', '.join(sorted(QUIZZES))}.")
    shots = DEFAULT_SHOTS if shots is None else shots
    folder = folder or lmeval_folder()
    task = quiz_task_name(name)
    demonstrations, questions = split(QUIZZES[name], seed, shots)
    files = {}
    for part, items in (("test", questions), ("train", demonstrations)):
        path = folder / task / f"{task}_{part}.jsonl"
        path.unlink(missing_ok=True)  # no stale demonstrations from an earlier few-shot config
        if items:  # `datasets` rejects an empty file
            _write_jsonl(path, [{"id": q.id, "question": q.question, "choices": list(q.choices), "answer": q.answer} for q in items])
            files[part] = str(path)
    config = {"task": task, **_template("quiz.yaml"), "dataset_kwargs": {"data_files": files}, "num_fewshot": shots}
    if not shots:
        del config["fewshot_split"], config["fewshot_config"]
    return _write_config(folder, config)


def write_mmlu_tasks(mmlu_dir: str | Path, subjects: list[str] | str | None = None, folder: Path | None = None) -> list[str]:
    """One lm-eval task per subject over the local Hendrycks CSVs (test, and dev for few-shot);
    returns the task names, `explorer_mmlu_<subject>`, in subject order.

    Columns are named explicitly and a header row, when present, skipped, so both the original
    header-less files and exports with a header load; pandas' NA parsing is off so a choice
    such as "None" stays text. pandas still types an all-numeric column as numbers, so a choice
    "2.50" in such a column would read back as 2.5: every field of all 57 subjects in
    ../shared/data/mmlu reads back identical to our CSV reader (checked when this was written)."""
    from explorer.evaluation.tasks.mmlu import choose_subjects, is_header, local_subjects, subject_title

    root = Path(mmlu_dir).expanduser()
    if not root.is_dir():
        raise ExplorerError(f"MMLU folder not found: {root}.")
    folder = folder or lmeval_folder()
    names = []
    for subject in choose_subjects(subjects, local_subjects(root, "test")):
        files = {part: root / part / f"{subject}_{part}.csv" for part in ("test", "dev")}
        files = {part: path for part, path in files.items() if path.is_file()}
        with open(files["test"], encoding="utf-8", newline="") as handle:
            header = is_header(next(csv.reader(handle), []))
        config = {
            "task": f"explorer_mmlu_{subject}",
            **_template("mmlu_local.yaml"),
            "description": f"The following are multiple choice questions (with answers) about {subject_title(subject)}.\n\n",
            "dataset_kwargs": {
                "data_files": {part: str(path) for part, path in files.items()},
                "column_names": MMLU_COLUMNS,
                "skiprows": 1 if header else 0,
                "keep_default_na": False,
                "na_filter": False,
            },
        }
        if "dev" not in files:
            del config["fewshot_split"], config["fewshot_config"]
        names.append(_write_config(folder, config))
    return names


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
    path = Path(path).expanduser()
    if not path.is_file():
        raise ExplorerError(f"BoolQ file not found: {path}.")
    rows = []
    for number, row in jsonl_values(path, str(path)):
        where = f"{path} line {number}"
        if not isinstance(row, dict) or not all(key in row for key in ("question", "passage", "answer")):
            raise ExplorerError(f"{where}: each line needs the fields question, passage and answer.")
        rows.append({"question": str(row["question"]), "passage": str(row["passage"]), "label": _boolq_label(row["answer"], where)})
    if not rows:
        raise ExplorerError(f"{path} holds no BoolQ questions.")
    return rows


def write_boolq_task(path: str | Path, folder: Path | None = None) -> str:
    folder = folder or lmeval_folder()
    task = "explorer_boolq"
    data = folder / task / f"{task}.jsonl"
    _write_jsonl(data, read_boolq(path))
    config = {"task": task, **_template("boolq_local.yaml"), "dataset_kwargs": {"data_files": {"validation": str(data)}}}
    return _write_config(folder, config)


def _task_manager(tasks: list[str], include_path: str | Path | None):
    """Index only our generated folder when it has every task (0.05 s); lm-eval's full index of
    ~15k built-in configs takes seconds, so it is built only for tasks such as `mmlu`."""
    from lm_eval.tasks import TaskManager

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


def run_lmeval(
    loaded: LoadedModel,
    tasks: list[str],
    limit: int | None = None,
    num_fewshot: int | None = None,
    include_path: str | Path | None = None,
    batch_size: int = 8,
) -> dict:
    """Run lm-eval tasks (names of lm-eval tasks or groups, or of tasks written by the
    `write_*` functions above) on the loaded model, in this process.

    Returns lm-eval's result dict (`results`, `configs`, `samples`, ...) plus `predictions`:
    {task: [predictions(sample) per question, in document order]}. `limit` takes the first
    questions of each task; `num_fewshot` None keeps each task's own setting.
    """
    check_limit(limit)
    if not tasks:
        raise ExplorerError("No lm-eval task given.")
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    manager = _task_manager(tasks, include_path)
    built = _load_tasks(manager, tasks)
    with inference(loaded.model):
        lm = HFLM(pretrained=loaded.model, tokenizer=loaded.tokenizer, batch_size=batch_size)
        results = simple_evaluate(
            model=lm, tasks=built, task_manager=manager, limit=limit, num_fewshot=num_fewshot,
            log_samples=True, bootstrap_iters=0,
        )
    results["predictions"] = {
        task: [predictions(s, results["configs"][task].get("target_delimiter", " ")) for s in samples]
        for task, samples in results["samples"].items()
    }
    return results

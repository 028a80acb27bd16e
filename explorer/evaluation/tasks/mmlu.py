"""MMLU (Hendrycks et al.) in two formats, from `cais/mmlu` or a local folder of CSVs.

- "mmlu": the standard letter format, with lm-eval's `mmlu` prompt (tasks/mmlu/default):
  "The following are multiple choice questions (with answers) about {subject}.\\n\\n{question}\\n
  A. ...\\nB. ...\\nC. ...\\nD. ...\\nAnswer:", scored by the next-token log-probs of " A".." D"
  (one forward per question). This is what the paper and large models are judged by.
- "mmlu-cloze": lm-eval's `mmlu_continuation` prompt ("The following are questions (with
  answers) about {subject}.\\n\\nQuestion: {question}\\nAnswer:") with each answer's text as the
  continuation, scored by its log-likelihood. `pred` is the length-normalized pick (acc_norm:
  log-likelihood per character, as lm-eval computes it) and the raw pick is kept as `acc`.
  Small models that answer nearly every letter-format question "A" still show a signal here.
- "mmlu-gen": the letter format's prompt, the answer letter generated (greedy, up to the end of
  the line, at most 8 tokens; lm-eval's `mmlu_generative` stops at the line's end too) and read
  from the start of the line ("B", "(B)", "B. Paris": explorer.evaluation.answers.extract_letter).
  Beside "mmlu" it shows whether the letter the model ranks first is also the one it writes.

k-shot prompts prepend the first k questions of the subject's dev split, solved (lm-eval's
`first_n` sampler). A local folder uses the original Hendrycks layout: `dev/`, `val/`,
`test/` holding `<subject>_<split>.csv` with rows question, 4 choices, answer (a letter A-D or
an index 0-3), with or without a header row.

Questions interleave the chosen subjects round-robin (first question of each subject, then the
second, ...), so a question cap samples every subject evenly and the order is deterministic.
"""

from __future__ import annotations

import csv
import difflib
import importlib.metadata
from dataclasses import dataclass
from pathlib import Path

from explorer.core.errors import ExplorerError
from explorer.evaluation.answers import extract_letter
from explorer.evaluation.lmeval import lmeval_folder, template, write_config
from explorer.evaluation.questions import QuestionResult, interleave, limited
from explorer.evaluation.scoring import cloze_picks, loglikelihoods, next_token_logprobs
from explorer.evaluation.tasks import register
from explorer.evaluation.tasks.generative import GenerationTask, Prompted
from explorer.lm.data import load_hub_dataset
from explorer.lm.generate import Decoding
from explorer.lm.models import LoadedModel

LETTERS = "ABCD"
SPLITS = ("test", "val", "dev")
HUB_SPLITS = {"test": "test", "val": "validation", "dev": "dev"}
HUB_DATASET = "cais/mmlu"
MMLU_COLUMNS = ["question", "choice0", "choice1", "choice2", "choice3", "answer"]  # the lm-eval config's names
SUBJECTS = (
    "abstract_algebra", "anatomy", "astronomy", "business_ethics", "clinical_knowledge", "college_biology",
    "college_chemistry", "college_computer_science", "college_mathematics", "college_medicine", "college_physics",
    "computer_security", "conceptual_physics", "econometrics", "electrical_engineering", "elementary_mathematics",
    "formal_logic", "global_facts", "high_school_biology", "high_school_chemistry", "high_school_computer_science",
    "high_school_european_history", "high_school_geography", "high_school_government_and_politics",
    "high_school_macroeconomics", "high_school_mathematics", "high_school_microeconomics", "high_school_physics",
    "high_school_psychology", "high_school_statistics", "high_school_us_history", "high_school_world_history",
    "human_aging", "human_sexuality", "international_law", "jurisprudence", "logical_fallacies", "machine_learning",
    "management", "marketing", "medical_genetics", "miscellaneous", "moral_disputes", "moral_scenarios", "nutrition",
    "philosophy", "prehistory", "professional_accounting", "professional_law", "professional_medicine",
    "professional_psychology", "public_relations", "security_studies", "sociology", "us_foreign_policy", "virology",
    "world_religions",
)  # the 57 configurations of cais/mmlu


@dataclass(frozen=True)
class MMLUQuestion:
    """One question; `answer` indexes the gold choice."""

    id: str
    subject: str
    question: str
    choices: tuple[str, str, str, str]
    answer: int


def parse_answer(text: str) -> int | None:
    """A letter A-D (the original CSVs) or an index 0-3 (cais/mmlu exports); None otherwise."""
    text = text.strip().upper()
    if len(text) == 1 and text in LETTERS:
        return LETTERS.index(text)
    if text in ("0", "1", "2", "3"):
        return int(text)
    return None


def is_header(row: list[str]) -> bool:
    """Hendrycks' CSVs have no header row, but re-exported ones often do (…,answer)."""
    return bool(row) and row[-1].strip().lower() in ("answer", "target", "label")


def read_csv(path: Path, subject: str, split: str) -> list[MMLUQuestion]:
    """Questions of one Hendrycks CSV; any malformed row is an error naming the file and line."""
    questions = []
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            reader = csv.reader(handle)
            for row in reader:
                if not row or (reader.line_num == 1 and is_header(row)):
                    continue
                where = f"{path} line {reader.line_num}"
                if len(row) != 6:
                    raise ExplorerError(f"{where}: expected 6 fields (question, 4 choices, answer), found {len(row)}.")
                answer = parse_answer(row[5])
                if answer is None:
                    raise ExplorerError(f"{where}: answer '{row[5]}' is not a letter A-D or an index 0-3.")
                if not row[0].strip():
                    raise ExplorerError(f"{where}: the question is empty.")
                qid = f"{subject}/{split}/{len(questions)}"
                questions.append(MMLUQuestion(qid, subject, row[0], tuple(row[1:5]), answer))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ExplorerError(f"{path} is not a readable UTF-8 CSV file ({exc}).") from exc
    if not questions:
        raise ExplorerError(f"{path} holds no questions.")
    return questions


def local_subjects(folder: Path, split: str) -> list[str]:
    split_dir = folder / split
    if not split_dir.is_dir():
        raise ExplorerError(f"No '{split}' folder in {folder}: expected the Hendrycks layout dev/, val/, test/.")
    suffix = f"_{split}.csv"
    subjects = sorted(p.name[: -len(suffix)] for p in split_dir.glob(f"*{suffix}"))
    if not subjects:
        raise ExplorerError(f"No <subject>{suffix} files in {split_dir}.")
    return subjects


def choose_subjects(requested: list[str] | str | None, available: list[str] | tuple[str, ...]) -> list[str]:
    """The requested subjects (all when None), each checked; unknown names suggest close matches."""
    if requested is None:
        return sorted(available)
    if isinstance(requested, str):
        requested = requested.split(",")
    chosen = [s.strip().lower().replace(" ", "_") for s in requested if s.strip()]
    if not chosen:
        raise ExplorerError("The subject list matches no MMLU subject: it is empty.")
    for subject in chosen:
        if subject not in available:
            close = difflib.get_close_matches(subject, available, n=3, cutoff=0.5)
            examples = ", ".join(sorted(available)[:3])
            hint = f"did you mean {', '.join(close)}?" if close else f"choose among {len(available)} subjects such as {examples}."
            raise ExplorerError(f"Unknown MMLU subject '{subject}': {hint}")
    return sorted(set(chosen))


def load_hub(subject: str, split: str) -> list[MMLUQuestion]:
    rows = load_hub_dataset(HUB_DATASET, "pass a local folder of MMLU CSVs (--mmlu-dir)", subject, split=HUB_SPLITS[split])
    return [
        MMLUQuestion(f"{subject}/{split}/{i}", subject, row["question"], tuple(row["choices"]), int(row["answer"]))
        for i, row in enumerate(rows)
    ]


class MMLUTask:
    """Questions and few-shot examples of the chosen subjects; subclasses format and score them."""

    chance = 0.25

    def __init__(self, mmlu_dir: str | Path | None = None, subjects: list[str] | str | None = None,
                 shots: int = 0, split: str = "test"):
        split = {"validation": "val"}.get(split, split)
        if split not in SPLITS:
            raise ExplorerError(f"Unknown MMLU split '{split}': choose test, val or dev.")
        if not 0 <= shots <= 5:
            raise ExplorerError(f"MMLU shots must be between 0 and 5 (the dev split has 5 per subject), got {shots}.")
        if shots and split == "dev":
            raise ExplorerError("Few-shot examples come from the dev split: evaluate on test or val.")
        self.shots, self.split = shots, split
        if mmlu_dir is None:
            self.subjects = choose_subjects(subjects, SUBJECTS)
            load = load_hub
            where = f"{HUB_DATASET} via datasets {importlib.metadata.version('datasets')}"
        else:
            folder = Path(mmlu_dir).expanduser()
            if not folder.is_dir():
                raise ExplorerError(f"MMLU folder not found: {folder}.")
            self.subjects = choose_subjects(subjects, local_subjects(folder, split))

            def load(subject: str, part: str) -> list[MMLUQuestion]:
                path = folder / part / f"{subject}_{part}.csv"
                if not path.is_file():
                    raise ExplorerError(f"Missing {path}: {shots}-shot prompts need the dev split of every subject.")
                return read_csv(path, subject, part)

            where = f"local CSVs at {folder}"
        self.questions = interleave([load(s, split) for s in sorted(self.subjects)])
        self.examples = {s: load(s, "dev")[:shots] if shots else [] for s in self.subjects}
        for subject, examples in self.examples.items():
            if len(examples) < shots:
                raise ExplorerError(f"The dev split of {subject} has {len(examples)} questions, fewer than {shots} shots.")
        self.source = (
            f"MMLU {self.prompt_format} ({where}, {len(self.subjects)} subjects, {len(self.questions)} {split} questions, "
            f"{shots}-shot)"
        )

    def selected(self, limit: int | None) -> list[MMLUQuestion]:
        return limited(self.questions, limit)


def subject_title(subject: str) -> str:
    return subject.replace("_", " ")


class MMLULetter(MMLUTask):
    name = "mmlu"
    metric = "acc"
    prompt_format = "letter format"

    @staticmethod
    def question_text(q: MMLUQuestion) -> str:
        """lm-eval's `doc_to_text` for mmlu (tasks/mmlu/default/_default_template_yaml)."""
        options = "".join(f"\n{letter}. {choice}" for letter, choice in zip(LETTERS, q.choices))
        return f"{q.question.strip()}{options}\nAnswer:"

    def prompt(self, q: MMLUQuestion) -> str:
        header = f"The following are multiple choice questions (with answers) about {subject_title(q.subject)}.\n\n"
        solved = "".join(f"{self.question_text(e)} {LETTERS[e.answer]}\n\n" for e in self.examples[q.subject])
        return header + solved + self.question_text(q)

    def score(self, loaded: LoadedModel, limit: int | None = None, batch_size: int = 8) -> list[QuestionResult]:
        questions = self.selected(limit)
        logprobs = next_token_logprobs(
            loaded, [self.prompt(q) for q in questions], [f" {letter}" for letter in LETTERS], batch_size
        )
        return [
            QuestionResult(q.id, LETTERS[int(row.argmax())], LETTERS[q.answer], row.tolist())
            for q, row in zip(questions, logprobs)
        ]


class MMLUCloze(MMLUTask):
    name = "mmlu-cloze"
    metric = "acc_norm"
    prompt_format = "cloze format"

    @staticmethod
    def question_text(q: MMLUQuestion) -> str:
        """lm-eval's `doc_to_text` for mmlu_continuation (tasks/mmlu/continuation)."""
        return f"Question: {q.question.strip()}\nAnswer:"

    def context(self, q: MMLUQuestion) -> str:
        header = f"The following are questions (with answers) about {subject_title(q.subject)}.\n\n"
        solved = "".join(f"{self.question_text(e)} {e.choices[e.answer]}\n\n" for e in self.examples[q.subject])
        return header + solved + self.question_text(q)

    def score(self, loaded: LoadedModel, limit: int | None = None, batch_size: int = 8) -> list[QuestionResult]:
        questions = self.selected(limit)
        requests = [(self.context(q), f" {choice}") for q in questions for choice in q.choices]
        scores = [logprob for logprob, _, _ in loglikelihoods(loaded, requests, batch_size)]
        results = []
        for i, q in enumerate(questions):
            logprobs = scores[4 * i : 4 * i + 4]
            normalized, raw = cloze_picks(list(q.choices), logprobs)
            results.append(
                QuestionResult(q.id, LETTERS[normalized], LETTERS[q.answer], logprobs, {"acc": LETTERS[raw]})
            )
        return results


class MMLUGeneration(GenerationTask, MMLULetter):
    """MMLU with the answer letter generated after the letter format's prompt (GenerationTask's
    scoring, MMLULetter's questions and prompts)."""

    name = "mmlu-gen"
    metric = "exact_match"
    prompt_format = "letter format, answer generated"
    decoding = Decoding(max_new_tokens=8, until=("</s>", "\n"))  # lm-eval's mmlu_generative stop strings
    answer = staticmethod(extract_letter)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.prompted = [Prompted(q.id, self.prompt(q), LETTERS[q.answer]) for q in self.questions]


def write_mmlu_tasks(mmlu_dir: str | Path, subjects: list[str] | str | None = None, folder: Path | None = None) -> list[str]:
    """One lm-eval task per subject over the local Hendrycks CSVs (test, and dev for few-shot);
    returns the task names, `explorer_mmlu_<subject>`, in subject order.

    Columns are named explicitly and a header row, when present, skipped, so both the original
    header-less files and exports with a header load; pandas' NA parsing is off so a choice
    such as "None" stays text. pandas still types an all-numeric column as numbers, so a choice
    "2.50" in such a column would read back as 2.5: every field of all 57 subjects in
    ../shared/data/mmlu reads back identical to our CSV reader (checked when this was written)."""
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
            **template("mmlu_local.yaml"),
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
        names.append(write_config(folder, config))
    return names


register(MMLULetter.name, MMLULetter)
register(MMLUCloze.name, MMLUCloze)
register(MMLUGeneration.name, MMLUGeneration, generative=True)

"""Prompt-based text classification scored by the LM head, after "Why Lift so Heavy?"
(Yuan, Nie, Ma & Färber, arXiv 2402.11700), which keeps only the first k layers and finds SST-2 and
AG News accuracy holds up.

Each example becomes a prompt ("Review: <text>\\nSentiment:", "Article: <text>\\nTopic:"),
optionally after k solved demonstrations, and every label word (" terrible"/" great";
" World"/" Sports"/" Business"/" Science") is scored as its continuation with
`explorer.evaluation.scoring.loglikelihoods`. The prediction is the label whose word has the highest
log-probability. A label word of several tokens is scored by the SUM of its tokens'
log-probs (the probability of the whole word, lm-eval's `acc`), not by the first token and not
per token; a longer word therefore needs more evidence, which is why the default words are
single tokens for llama-family tokenizers.

Data: `stanfordnlp/sst2` (validation split, the test labels are hidden) and
`fancyzhx/ag_news` (test split) through `datasets` when online, with demonstrations drawn
from their train splits; or a local .csv (header with `text` and `label`) or .jsonl
(`{"text": ..., "label": ...}`) file offline, where every tenth row (rows 9, 19, ...) is
kept back as the demonstration pool and the others are scored. A label is an index or a
label name/word. For sst2, `data_file="embedded"` uses the 200 Rotten Tomatoes sentences of
Pang & Lee's sentence-polarity data (the reviews SST-2 was built from) that ship in gensim's
test data, so the task runs with no network.

Training split (option `train` = N, for prompt-based finetuning, `explorer.surgery.finetune`). THE RULE:
a task's training examples never appear among its scored examples or its demonstrations (checked
by example id in tests/test_finetune.py). From the hub, they are drawn from the train split after
the demonstrations are set aside; from a local file or the embedded sentences, from the rows that
would otherwise be scored (never from the every-tenth-row demonstration pool), which are then no
longer scored. Either way: a seeded shuffle, labels taken in turn, the first N. Holding out N
needs at least N + (number of labels) candidate rows, so every label can still be scored.

Scored examples are ordered round-robin by label (first of each label, then the second, ...),
keeping the source's order within a label, so a `limit` samples the labels evenly even when
a file lists all negatives first (as the Pang & Lee file does). Demonstrations are drawn
deterministically: the pool is shuffled with `seed` and taken one
label at a time in turn, so k >= #labels shows every label and the same k always gives the
same prompt.
"""

from __future__ import annotations

import csv
import functools
import importlib.metadata
import random
from dataclasses import dataclass
from pathlib import Path

from explorer.core.errors import ExplorerError
from explorer.evaluation.questions import QuestionResult, interleave, limited
from explorer.evaluation.scoring import loglikelihoods
from explorer.evaluation.tasks import register
from explorer.lm.data import EMBEDDED, embedded_corpus_dir, jsonl_values, load_hub_dataset
from explorer.lm.models import LoadedModel

MAX_SHOTS = 32
DEMO_EVERY = 10  # local files: rows 9, 19, 29, ... form the demonstration pool
PANG_LEE_FILE = "pang_lee_polarity.cor"


@dataclass(frozen=True)
class Example:
    id: str
    text: str
    label: int  # index into the task's labels


@dataclass(frozen=True)
class ClassificationSpec:
    """One classification set: where it lives, its labels in the data set's order and the prompt."""

    name: str
    hub_id: str
    eval_split: str
    text_field: str
    labels: tuple[str, ...]  # label names as the data set defines them
    words: tuple[str, ...]  # default label words, one per label, scored after a space
    template: str  # prompt with one {} for the text


SPECS = {
    spec.name: spec
    for spec in (
        ClassificationSpec("sst2", "stanfordnlp/sst2", "validation", "sentence", ("negative", "positive"),
                           ("terrible", "great"), "Review: {}\nSentiment:"),
        ClassificationSpec("agnews", "fancyzhx/ag_news", "test", "text", ("World", "Sports", "Business", "Sci/Tech"),
                           ("World", "Sports", "Business", "Science"), "Article: {}\nTopic:"),
    )
}


def clean(text: str) -> str:
    """One line: a newline inside the text would break the prompt's layout."""
    return " ".join(text.split())


def parse_label(value: object, spec: ClassificationSpec, words: tuple[str, ...]) -> int | None:
    """An index 0..K-1 (int or digits), or a label name or word (any case); None otherwise."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if 0 <= value < len(spec.labels) else None
    if not isinstance(value, str):
        return None
    text = value.strip()
    if text.isdigit():
        return parse_label(int(text), spec, words)
    names = [n.lower() for n in spec.labels]
    lowered_words = [w.lower() for w in words]
    for options in (names, lowered_words):
        if text.lower() in options:
            return options.index(text.lower())
    return None


def _rows_csv(path: Path) -> list[tuple[int, object, object]]:
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or not {"text", "label"} <= set(reader.fieldnames):
            raise ExplorerError(f"{path} needs a header row with columns 'text' and 'label' (found {reader.fieldnames}).")
        return [(reader.line_num, row["text"], row["label"]) for row in reader]


def _rows_jsonl(path: Path) -> list[tuple[int, object, object]]:
    rows = []
    for number, record in jsonl_values(path, str(path)):
        if not isinstance(record, dict):
            raise ExplorerError(f"{path} line {number} is not an object with 'text' and 'label'.")
        rows.append((number, record.get("text"), record.get("label")))
    return rows


def read_local(path: Path, spec: ClassificationSpec, words: tuple[str, ...]) -> list[Example]:
    """Every row of a local CSV/JSONL file; a malformed row is an error naming its line."""
    if not path.is_file():
        raise ExplorerError(f"Classification data file not found: {path}.")
    readers = {".csv": _rows_csv, ".jsonl": _rows_jsonl}
    if path.suffix.lower() not in readers:
        raise ExplorerError(f"{path.name}: use a .csv (columns text, label) or .jsonl file.")
    try:
        rows = readers[path.suffix.lower()](path)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ExplorerError(f"{path} is not a readable UTF-8 file ({exc}).") from exc
    examples = []
    for number, text, label in rows:
        if not isinstance(text, str) or not text.strip():
            raise ExplorerError(f"{path} line {number}: the text is missing or empty.")
        index = parse_label(label, spec, words)
        if index is None:
            raise ExplorerError(
                f"{path} line {number}: label {label!r} is not an index 0-{len(spec.labels) - 1} "
                f"or one of {', '.join(spec.labels)} / {', '.join(words)}."
            )
        examples.append(Example(f"{spec.name}/{path.name}/{len(examples)}", clean(text), index))
    if not examples:
        raise ExplorerError(f"{path} holds no examples.")
    return examples


def read_pang_lee() -> list[Example]:
    """Pang & Lee sentence polarity as gensim ships it: '__label__neg <tokenized sentence>' per line,
    in Windows-1252 like the original rt-polarity release (0x97 is an em dash)."""
    path = embedded_corpus_dir() / PANG_LEE_FILE
    labels = {"__label__neg": 0, "__label__pos": 1}
    examples = []
    for line in path.read_text(encoding="cp1252").splitlines():
        tag, _, text = line.partition(" ")
        if tag in labels and text.strip():
            examples.append(Example(f"sst2/pang-lee/{len(examples)}", clean(text), labels[tag]))
    return examples


def load_hub(spec: ClassificationSpec, split: str) -> list[Example]:
    alternative = f"pass a local .csv/.jsonl file with text and label (data_file){' or data_file=embedded' if spec.name == 'sst2' else ''}"
    rows = load_hub_dataset(spec.hub_id, alternative, split=split)
    return [Example(f"{spec.name}/{split}/{i}", clean(row[spec.text_field]), int(row["label"])) for i, row in enumerate(rows)]


def by_label_in_turn(examples: list[Example], num_labels: int) -> list[Example]:
    """Labels in turn, source order within each label."""
    return interleave([[e for e in examples if e.label == label] for label in range(num_labels)])


def pick_demonstrations(pool: list[Example], shots: int, num_labels: int, seed: int) -> list[Example]:
    """`shots` examples from the pool, labels taken in turn after a seeded shuffle."""
    shuffled = list(pool)
    random.Random(seed).shuffle(shuffled)
    return by_label_in_turn(shuffled, num_labels)[:shots]


def pick_training(candidates: list[Example], train: int, num_labels: int, seed: int, where: str) -> list[Example]:
    """The training split: `train` candidates after a seeded shuffle, labels in turn; enough must
    stay behind to score one example of every label."""
    if not train:
        return []
    if train < num_labels:
        raise ExplorerError(f"Use at least {num_labels} training examples (one per label), got {train}.")
    if len(candidates) < train + num_labels:
        raise ExplorerError(
            f"{where} is too small to hold out {train} training examples: that needs at least "
            f"{train + num_labels} rows to draw from ({num_labels} left to score), it has {len(candidates)}."
        )
    return pick_demonstrations(candidates, train, num_labels, seed + 1)


def choose_words(option: list[str] | str | None, spec: ClassificationSpec) -> tuple[str, ...]:
    """The words scored for each label: the defaults or the user's, one per label, distinct."""
    if option is None:
        return spec.words
    words = [w.strip() for w in (option.split(",") if isinstance(option, str) else option)]
    if len(words) != len(spec.labels) or not all(words) or len(set(words)) != len(words):
        raise ExplorerError(
            f"{spec.name} needs {len(spec.labels)} distinct non-empty label words (for {', '.join(spec.labels)}), got {words}."
        )
    return tuple(words)


class ClassificationTask:
    """A registry task: prompt-based classification of one data set with k demonstrations."""

    metric = "acc"

    def __init__(self, spec: ClassificationSpec, data_file: str | Path | None = None, shots: int = 0,
                 seed: int = 0, label_words: list[str] | str | None = None, train: int = 0):
        if not 0 <= shots <= MAX_SHOTS:
            raise ExplorerError(f"The number of demonstrations k must be between 0 and {MAX_SHOTS}, got {shots}.")
        self.spec, self.name, self.shots = spec, spec.name, shots
        self.words = choose_words(label_words, spec)
        self.chance = 1 / len(spec.labels)
        if train < 0:
            raise ExplorerError(f"The number of training examples must be 0 or more, got {train}.")
        examples, pool, where = self._load(data_file, train)
        if shots > len(pool):
            raise ExplorerError(
                f"k = {shots} demonstrations, but {where} offers only {len(pool)} (every {DEMO_EVERY}th row of a local file)."
            )
        self.demonstrations = pick_demonstrations(pool, shots, len(spec.labels), seed)
        hub = data_file is None
        demo_ids = {d.id for d in self.demonstrations}
        candidates = [e for e in pool if e.id not in demo_ids] if hub else examples
        self.train_examples = pick_training(candidates, train, len(spec.labels), seed, where)
        train_ids = {e.id for e in self.train_examples}
        self.examples = by_label_in_turn([e for e in examples if e.id not in train_ids], len(spec.labels))
        self.source = (
            f"{spec.name}: {where}, {len(self.examples)} examples"
            + (f" (+{len(self.train_examples)} for training)" if train else "")
            + f", {shots}-shot (seed {seed}), label words {'/'.join(self.words)}"
        )

    def _load(self, data_file: str | Path | None, train: int) -> tuple[list[Example], list[Example], str]:
        """(scored examples, demonstration pool, description of the source)."""
        spec = self.spec
        if data_file is None:
            version = importlib.metadata.version("datasets")
            pool = load_hub(spec, "train") if self.shots or train else []
            return load_hub(spec, spec.eval_split), pool, f"{spec.hub_id} {spec.eval_split} via datasets {version}"
        if str(data_file) == EMBEDDED:
            if spec.name != "sst2":
                raise ExplorerError(f"No embedded data for {spec.name}: pass a local .csv/.jsonl file (data_file).")
            rows = read_pang_lee()
            where = (
                f"Pang & Lee sentence polarity (Rotten Tomatoes, {len(rows)} sentences in gensim "
                f"{importlib.metadata.version('gensim')} test data)"
            )
        else:
            path = Path(data_file).expanduser()
            rows = read_local(path, spec, self.words)
            where = f"local file {path}"
        pool = [e for i, e in enumerate(rows) if i % DEMO_EVERY == DEMO_EVERY - 1]
        scored = [e for i, e in enumerate(rows) if i % DEMO_EVERY != DEMO_EVERY - 1]
        return scored, pool, where

    def prompt(self, text: str) -> str:
        return self.spec.template.format(text)

    def context(self, example: Example) -> str:
        """Demonstrations (solved, blank-line separated), then the example's prompt."""
        solved = "".join(f"{self.prompt(d.text)} {self.words[d.label]}\n\n" for d in self.demonstrations)
        return solved + self.prompt(example.text)

    def score(self, loaded: LoadedModel, limit: int | None = None, batch_size: int = 8) -> list[QuestionResult]:
        examples = limited(self.examples, limit)
        if loaded.model.get_output_embeddings() is None:
            raise ExplorerError(f"{loaded.name} has no LM head to score label words with.")
        requests = [(self.context(e), f" {word}") for e in examples for word in self.words]
        scores = [logprob for logprob, _, _ in loglikelihoods(loaded, requests, batch_size)]
        size = len(self.words)
        results = []
        for i, example in enumerate(examples):
            row = scores[i * size:(i + 1) * size]
            pick = max(range(size), key=row.__getitem__)
            results.append(QuestionResult(example.id, self.words[pick], self.words[example.label], row))
        return results


for _spec in SPECS.values():
    register(_spec.name, functools.partial(ClassificationTask, _spec))

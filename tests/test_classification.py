"""Prompt-based classification: the task's scores equal log-probs computed here by hand, on real
movie-review sentences (Pang & Lee sentence polarity, shipped in gensim's test data)."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from explorer.core.errors import ExplorerError
from explorer.evaluation.tasks import get_task, task_names
from explorer.evaluation.tasks.classification import MAX_SHOTS
from explorer.lm.data import embedded_corpus_dir
from explorer.lm.models import LoadedModel

ROWS = 20  # rows 9 and 19 become the demonstration pool, the other 18 are scored


def pang_lee_rows(count: int = ROWS) -> list[tuple[str, int]]:
    """Real labelled sentences, alternating negative (0) and positive (1) from the packaged file."""
    lines = (embedded_corpus_dir() / "pang_lee_polarity.cor").read_text(encoding="cp1252").splitlines()
    neg = [line.split(" ", 1)[1] for line in lines if line.startswith("__label__neg ")]
    pos = [line.split(" ", 1)[1] for line in lines if line.startswith("__label__pos ")]
    rows = []
    for a, b in zip(neg, pos):
        rows += [(" ".join(a.split()), 0), (" ".join(b.split()), 1)]
    return rows[:count]


@pytest.fixture()
def jsonl_file(tmp_path):
    path = tmp_path / "polarity.jsonl"
    path.write_text("".join(json.dumps({"text": t, "label": label}) + "\n" for t, label in pang_lee_rows()))
    return path


@torch.no_grad()
def _continuation_logprob(loaded, context: str, continuation: str) -> float:
    """Sum of log p(token) over the continuation's tokens, from one forward of context + continuation."""
    tokenizer = loaded.tokenizer
    context_ids = tokenizer(context).input_ids
    whole = tokenizer(context + continuation).input_ids
    assert whole[: len(context_ids)] == context_ids  # no token merges across the boundary here
    logprobs = torch.log_softmax(loaded.model(torch.tensor([whole])).logits[0].float(), dim=-1)
    return sum(logprobs[t - 1, whole[t]].item() for t in range(len(context_ids), len(whole)))


@pytest.mark.parametrize(
    ("shots", "words"),
    [(2, ("terrible", "great")), (0, ("bad movie", "good movie"))],  # the second: two tokens per word, summed
)
def test_scores_equal_independent_log_probs(embedded, jsonl_file, shots, words):
    task = get_task("sst2", data_file=str(jsonl_file), shots=shots, label_words=",".join(words))
    assert task.chance == 0.5 and len(task.examples) == ROWS - 2
    rows = pang_lee_rows()
    pool = [rows[9], rows[19]]
    demos = [(d.text, d.label) for d in task.demonstrations]
    assert sorted(demos, key=lambda d: d[1]) == sorted(pool[:shots], key=lambda d: d[1])  # held-out rows, both labels
    prefix = "".join(f"Review: {text}\nSentiment: {words[label]}\n\n" for text, label in demos)

    results = task.score(embedded, limit=4, batch_size=3)
    scored = [r for i, r in enumerate(rows) if i % 10 != 9]
    for result, (text, label) in zip(results, scored[:4]):  # the file alternates labels already
        expected = [_continuation_logprob(embedded, f"{prefix}Review: {text}\nSentiment:", f" {w}") for w in words]
        assert result.scores == pytest.approx(expected, abs=1e-3)
        assert result.pred == words[max(range(2), key=expected.__getitem__)]
        assert result.gold == words[label]
    if words[0] == "bad movie":
        assert len(embedded.tokenizer(" bad movie").input_ids) == 2


def test_csv_with_label_names_reads_like_jsonl(tmp_path, jsonl_file):
    path = tmp_path / "polarity.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows((text, ["negative", "Great"][label]) for text, label in pang_lee_rows())
    from_csv = get_task("sst2", data_file=str(path), shots=1)
    from_jsonl = get_task("sst2", data_file=str(jsonl_file), shots=1)
    assert [(e.text, e.label) for e in from_csv.examples] == [(e.text, e.label) for e in from_jsonl.examples]


def test_embedded_sst2_is_balanced_pang_lee():
    task = get_task("sst2", data_file="embedded", shots=4)
    assert {"sst2", "agnews"} <= set(task_names())
    assert len(task.examples) == 180 and "gensim" in task.source and "Pang & Lee" in task.source
    assert [e.label for e in task.examples[:6]] == [0, 1, 0, 1, 0, 1]  # the file lists all negatives first
    assert sorted(d.label for d in task.demonstrations) == [0, 0, 1, 1]
    assert not {d.text for d in task.demonstrations} & {e.text for e in task.examples}
    assert all("\n" not in e.text for e in task.examples)


@pytest.mark.parametrize(
    ("content", "suffix", "options", "message"),
    [
        ("", ".jsonl", {}, "no examples"),
        ('{"text": "fine", "label": 1}\n{"text": "broken", \n', ".jsonl", {}, "line 2 is not valid JSON"),
        ('{"text": "fine", "label": 7}\n', ".jsonl", {}, "label 7"),
        ('{"text": "", "label": 0}\n', ".jsonl", {}, "text is missing"),
        ("text,score\nfine,1\n", ".csv", {}, "columns 'text' and 'label'"),
        ("text,label\n", ".csv", {}, "no examples"),
        ("fine\t1\n", ".tsv", {}, ".csv"),
        ('{"text": "fine", "label": 1}\n', ".jsonl", {"shots": 1}, "offers only 0"),
        ('{"text": "fine", "label": 1}\n', ".jsonl", {"shots": -1}, "between 0 and"),
        ('{"text": "fine", "label": 1}\n', ".jsonl", {"shots": MAX_SHOTS + 1}, "between 0 and"),
        ('{"text": "fine", "label": 1}\n', ".jsonl", {"label_words": "good"}, "2 distinct"),
    ],
)
def test_bad_files_and_options(tmp_path, content, suffix, options, message):
    path = tmp_path / f"data{suffix}"
    path.write_text(content)
    with pytest.raises(ExplorerError, match=message):
        get_task("sst2", data_file=str(path), **options)


def test_bad_sources_and_models(tmp_path, tiny_llama):
    with pytest.raises(ExplorerError, match="not found"):
        get_task("sst2", data_file=str(tmp_path / "missing.csv"))
    with pytest.raises(ExplorerError, match="No embedded data for agnews"):
        get_task("agnews", data_file="embedded")
    headless = LoadedModel(tiny_llama.model.model, tiny_llama.tokenizer, "tiny base", "x")  # no LM head
    with pytest.raises(ExplorerError, match="no LM head"):
        get_task("sst2", data_file="embedded").score(headless, limit=1)

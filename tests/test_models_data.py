"""Model sources (embedded, folder, .gguf, hub) and calibration-text sources (.txt, .jsonl,
.parquet, embedded corpus), with the user errors each can produce."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from explorer.core.errors import ExplorerError
from explorer.evaluation.tasks import get_task
from explorer.lm.data import (
    batches,
    check_settings,
    documents,
    make_samples,
    pad_batch,
    source_fingerprint,
    split_documents,
)
from explorer.lm.layers import layers_path, parameter_count
from explorer.lm.models import embedded_gguf_path, load_model, resolve_source

REPO = Path(__file__).resolve().parents[1]


# ---- model sources -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "source, message",
    [
        ("", "No model given"),
        ("   ", "No model given"),
        ("/nowhere/model.gguf", "GGUF file not found"),
        ("./no-such-folder", "neither a model folder nor a .gguf file"),
    ],
)
def test_resolve_source_errors(source, message):
    with pytest.raises(ExplorerError, match=message):
        resolve_source(source)


def test_folder_without_config_is_rejected(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ExplorerError, match="no config.json"):
        resolve_source(str(tmp_path))


def _damaged_gguf(tmp_path: Path, tiny_llama_dir: Path) -> str:
    """The first 300 kB of the real embedded GGUF: a download cut short."""
    path = tmp_path / "cut.gguf"
    with open(embedded_gguf_path(), "rb") as source:
        path.write_bytes(source.read(300_000))
    return str(path)


def _damaged_folder(tmp_path: Path, tiny_llama_dir: Path) -> str:
    """A save_pretrained folder whose weights file holds garbage."""
    folder = tmp_path / "broken"
    shutil.copytree(tiny_llama_dir, folder)
    (folder / "model.safetensors").write_bytes(os.urandom(1000))
    return str(folder)


@pytest.mark.parametrize("damage", [_damaged_gguf, _damaged_folder], ids=["gguf", "safetensors"])
def test_damaged_model_files_give_a_clear_error(damage, tmp_path, tiny_llama_dir):
    with pytest.raises(ExplorerError, match="damaged or incomplete"):
        load_model(damage(tmp_path, tiny_llama_dir), device="cpu")


def test_resolve_source_kinds(tiny_llama_dir, tmp_path):
    assert resolve_source(str(tiny_llama_dir)) == ("folder", str(tiny_llama_dir), None)
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    assert resolve_source(str(gguf)) == ("gguf", str(tmp_path), "m.gguf")
    assert resolve_source("HuggingFaceTB/SmolLM2-135M") == ("hub", "HuggingFaceTB/SmolLM2-135M", None)


def test_load_local_folder(tiny_llama, tiny_llama_dir):
    from transformers import LlamaForCausalLM

    assert tiny_llama.num_layers == 4
    assert tiny_llama.name == str(tiny_llama_dir)
    assert tiny_llama.fingerprint.startswith("folder:")
    assert tiny_llama.device.type == "cpu"
    assert tiny_llama.tokenizer.pad_token_id is not None
    # Same weights as transformers reading the folder itself.
    direct = LlamaForCausalLM.from_pretrained(tiny_llama_dir).eval()
    ids = torch.tensor([tiny_llama.tokenizer("The quick brown fox jumps.")["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(tiny_llama.model(ids).logits, direct(ids).logits)
    assert parameter_count(tiny_llama.model) == parameter_count(direct)


def test_unknown_hub_id_fails_fast():
    """Offline (or with no such repo) the user gets one sentence in seconds, not a minute of retries."""
    start = time.monotonic()
    with pytest.raises(ExplorerError) as info:
        load_model("no-such-org-lpe/no-such-model-lpe", device="cpu")
    assert time.monotonic() - start < 10
    message = str(info.value)
    assert "no-such-org-lpe/no-such-model-lpe" in message and "\n" not in message


HUB_DATA = {  # what reads a Hugging Face dataset, and the offline alternative its message must name
    "agnews": (lambda: get_task("agnews"), "data_file"),
    "sst2": (lambda: get_task("sst2"), "data_file=embedded"),
    "mmlu": (lambda: get_task("mmlu"), "--mmlu-dir"),
    "boolq": (lambda: get_task("boolq"), "boolq_file"),
    "c4": (lambda: next(iter(documents("c4"))), "embedded corpus"),
}


@pytest.mark.parametrize("name", HUB_DATA)
def test_hub_datasets_fail_fast_offline(name):
    """Pages re-run on every click: a hub data set must not cost `datasets`' half minute of retries each time."""
    load, alternative = HUB_DATA[name]
    start = time.monotonic()
    try:
        load()
    except ExplorerError as exc:
        assert alternative in str(exc) and "\n" not in str(exc)
    else:
        pytest.skip("the Hugging Face hub is reachable here: the offline error cannot show")
    assert time.monotonic() - start < 10


def test_unsupported_architecture_names_what_it_found(tmp_path):
    """ALBERT shares one layer group across its depth: no module list as long as the model is deep."""
    from transformers import AlbertConfig, AlbertForMaskedLM

    config = AlbertConfig(vocab_size=64, embedding_size=16, hidden_size=32, num_hidden_layers=3,
                          num_attention_heads=2, intermediate_size=64)
    model = AlbertForMaskedLM(config)
    with pytest.raises(ExplorerError, match=r"Unsupported architecture 'albert'.*albert_layer_groups \(1\)"):
        layers_path(model)
    model.save_pretrained(tmp_path)
    with pytest.raises(ExplorerError, match="Could not load"):
        load_model(str(tmp_path), device="cpu")


@pytest.mark.slow
def test_embedded_gguf_file_equals_cached_embedded_model(embedded):
    """Loading the shipped .gguf directly (the ~20 s dequantization) gives the same model as the
    safetensors copy the embedded source caches."""
    path = embedded_gguf_path()
    direct = load_model(str(path), device="cpu")
    assert direct.fingerprint.startswith("gguf:") and direct.num_layers == embedded.num_layers == 30
    prompt = embedded.tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    assert direct.tokenizer("The capital of France is", return_tensors="pt")["input_ids"].tolist() == prompt.tolist()
    with torch.no_grad():
        torch.testing.assert_close(direct.model(prompt).logits, embedded.model(prompt).logits, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_embedded_source_reads_the_gguf_when_its_copy_cannot_be_written(embedded, tmp_path, full_disk):
    """On a full disk the dequantized copy fails to save: the embedded source falls back to the
    shipped GGUF (slower, same model) and leaves no partial copy behind."""
    script = "from explorer.lm.models import resolve_source; print(resolve_source('embedded'))"
    env = {**os.environ, "EXPLORER_HOME": str(tmp_path), "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300,
                          preexec_fn=full_disk)
    assert done.returncode == 0, done.stderr
    gguf = embedded_gguf_path()
    assert done.stdout.strip().splitlines()[-1] == str(("embedded", str(gguf.parent), gguf.name))
    assert list((tmp_path / "models").iterdir()) == []


# ---- text sources --------------------------------------------------------------------------


def test_txt_documents_are_blank_line_separated(tmp_path):
    path = tmp_path / "docs.txt"
    path.write_text("First doc,\nstill first.\n\nSecond doc.\n\n\n\nThird doc.\n   \nFourth doc.\n")
    assert list(documents(str(path))) == ["First doc,\nstill first.", "Second doc.", "Third doc.", "Fourth doc."]


def test_jsonl_documents(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text('{"text": "alpha", "id": 1}\n\n{"text": "beta"}\n')
    assert list(documents(str(path))) == ["alpha", "beta"]


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"text": "ok"}\n{"text": broken\n', "line 2 is not valid JSON"),
        ('{"text": "ok"}\n{"body": "no text"}\n', "line 2 has no string field 'text'"),
        ('["text"]\n', "line 1 has no string field 'text'"),
    ],
)
def test_jsonl_bad_lines(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(ExplorerError, match=message):
        list(documents(str(path)))


def test_parquet_documents(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"text": ["one", None, "two"], "n": [1, 2, 3]}), path)
    assert list(documents(str(path))) == ["one", "two"]
    wrong = tmp_path / "wrong.parquet"
    pq.write_table(pa.table({"body": ["one"]}), wrong)
    with pytest.raises(ExplorerError, match="column 'text'"):
        list(documents(str(wrong)))


def test_missing_and_unsupported_files(tmp_path):
    with pytest.raises(ExplorerError, match="not found"):
        documents(str(tmp_path / "missing.txt"))
    csv = tmp_path / "docs.csv"
    csv.write_text("text\nhello\n")
    with pytest.raises(ExplorerError, match="Unsupported text file type '.csv'"):
        documents(str(csv))


@pytest.mark.parametrize("name", ["empty.txt", "empty.jsonl", "empty.parquet"])
def test_empty_file_is_a_user_error(tmp_path, embedded, name):
    path = tmp_path / name
    if name.endswith(".parquet"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"text": pa.array([], pa.string())}), path)
    else:
        path.write_text("\n\n")
    with pytest.raises(ExplorerError, match="No usable text"):
        make_samples(embedded.tokenizer, str(path), 4, 32)


def test_embedded_corpus_is_real_prose():
    docs = list(documents("embedded"))
    assert len(docs) >= 300 and len(set(docs)) >= 0.97 * len(docs)
    words = [len(doc.split()) for doc in docs]
    assert min(words) >= 10 and sum(words) / len(docs) > 50
    common = sum(" the " in doc for doc in docs)
    assert common >= 0.95 * len(docs)


def test_train_and_heldout_are_disjoint():
    """Every tenth distinct document is held out; repeats (the corpus has a few) are dropped,
    so no text is both calibrated on and validated on."""
    distinct = list(dict.fromkeys(documents("embedded")))
    train = list(split_documents("embedded", "train"))
    heldout = list(split_documents("embedded", "heldout"))
    assert heldout == distinct[9::10]
    assert len(train) + len(heldout) == len(distinct)
    assert not set(train) & set(heldout)


def test_repeated_document_lands_in_one_split(tmp_path):
    docs = [f"Document number {i} of the file." for i in range(12)]
    path = tmp_path / "repeats.txt"
    path.write_text("\n\n".join(docs[:9] + [docs[2]] + docs[9:]))
    assert list(split_documents(str(path), "heldout")) == [docs[9]]
    assert list(split_documents(str(path), "train")) == docs[:9] + docs[10:]


def test_make_samples_is_deterministic_and_truncated(embedded):
    first = make_samples(embedded.tokenizer, "embedded", 5, 48)
    again = make_samples(embedded.tokenizer, "embedded", 5, 48)
    assert first == again
    assert len(first.ids) == 5 and all(16 <= len(ids) <= 48 for ids in first.ids)
    # The first samples are the first train documents, tokenized with default special tokens.
    doc = next(iter(split_documents("embedded", "train")))
    assert first.ids[0] == embedded.tokenizer(doc)["input_ids"][:48]
    assert make_samples(embedded.tokenizer, "embedded", 5, 64).fingerprint != first.fingerprint
    assert make_samples(embedded.tokenizer, "embedded", 4, 48).fingerprint != first.fingerprint
    assert make_samples(embedded.tokenizer, "embedded", 5, 48, "heldout").fingerprint != first.fingerprint


def test_make_samples_keeps_documents_of_at_least_16_tokens(embedded, tmp_path):
    tok = embedded.tokenizer
    short = "A short line."
    long_a = "The committee met on Tuesday to discuss the new budget for schools, roads and hospitals in the region."
    long_b = "Firefighters worked through the night to contain the blaze, which destroyed several homes near the river."
    assert len(tok(short)["input_ids"]) < 16 <= min(len(tok(long_a)["input_ids"]), len(tok(long_b)["input_ids"]))
    path = tmp_path / "mixed.txt"
    path.write_text("\n\n".join([short, long_a, "Another short one.", long_b]))
    samples = make_samples(tok, str(path), 10, 64)
    assert samples.ids == [tok(long_a)["input_ids"], tok(long_b)["input_ids"]]
    # With seq_len below 16 the bar is seq_len itself: every document truncated to it counts.
    tiny = make_samples(tok, str(path), 10, 3)
    assert len(tiny.ids) == 4 and all(len(ids) == 3 for ids in tiny.ids)
    # The fingerprint follows the file's content.
    before = source_fingerprint(str(path))
    path.write_text(long_a)
    assert source_fingerprint(str(path)) != before


@pytest.mark.parametrize("samples, seq_len, batch_size", [(0, 32, 1), (1, 1, 1), (1, 32, 0)])
def test_check_settings(samples, seq_len, batch_size):
    with pytest.raises(ExplorerError):
        check_settings(samples, seq_len, batch_size)


def test_batches_and_right_padding():
    assert list(batches([1, 2, 3, 4, 5], 2)) == [[1, 2], [3, 4], [5]]
    input_ids, mask = pad_batch([[5, 6, 7], [8]], pad_id=0)
    assert input_ids.tolist() == [[5, 6, 7], [8, 0, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0]]

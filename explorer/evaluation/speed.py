"""What pruning buys, measured: prefill latency, decode throughput and memory of a model and of its
pruned versions, timed in one process, interleaved.

"Fewer layers" is a claim until the clock says so, and machines shared with other work make single
timings unreliable. So every model of a comparison is timed in this one process, on the same prompts,
interleaved step by step (`lockstep`: A's prefill, B's prefill, A's first decode step, B's, then B's
second, A's, ...), so load that comes and goes hits all of them alike; each repeat gives every model
one time, and the minimum (the least disturbed repeat) and the median are reported. Speedups are
ratios of times taken a few steps apart. CPU seconds of the process are recorded beside the wall
time: on a loaded machine they show what the work cost without the waiting. The torch thread count
is whatever explorer.core.threads set for the process (recorded with the result, never changed here).

What is timed is the model's own forward in a plain greedy loop with a KV cache (transformers'
DynamicCache): a prefill of the prompt, then `new_tokens` decode steps of one token per sequence, no
early stop. Before any timing, each model's cached loop is checked against its normal forward (one
pass without a cache over the prompt and the generated tokens): the logits must agree, so the thing
timed is the (pruned) model itself, not a shortcut.

Memory: weights are the bytes of the model's parameters and buffers (exact; a pruned view shares the
unpruned weights but owns only its kept layers' tensors); the KV cache is the bytes of the cache's
tensors after decoding. On CUDA the peak above the weights comes from max_memory_allocated (reset
before the pass), and what it holds beyond the KV cache is the activations; on CPU no allocator
counts tensors, so the process's peak resident memory above its level before the pass (Linux:
VmHWM, reset through /proc/self/clear_refs) stands in for it, a cruder figure (the allocator keeps
freed pages, other threads allocate too).

The ideal speedup of removing n of L layers is L / (L - n): what it would be if the layers were all
of the cost. The LM head (a vocabulary-wide matrix product per token), the embeddings, masks and
rotary set-up and the Python of each step are not removed with the layers; `decode_parts` times
them directly in a decode step (hooks on the first and last decoder layer), which gives the best
speedup those fixed costs allow.
"""

from __future__ import annotations

import ctypes
import inspect
import os
import statistics
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable

import torch
from transformers.cache_utils import DynamicCache

from explorer.core.errors import Cancelled, ExplorerError
from explorer.core.options import setting
from explorer.lm.forward import inference
from explorer.lm.layers import decoder_layers, parameter_count

SEED = 0  # of the prompts' token ids: every model of a comparison reads the same prompts
# Largest difference between the cached loop's logits and the normal forward's, relative to the
# largest logit, that still counts as the same computation (cached attention sums in another order).
TOLERANCE = {torch.float32: 1e-3, torch.float64: 1e-8}
HALF_TOLERANCE = 5e-2  # bf16 / fp16 / 4-bit compute: rounding differs between the two paths
PARTS = ("prefill", "decode", "prefill_cpu", "decode_cpu")  # what `lockstep` times per model


def parse_sizes(text: str) -> tuple[int, ...]:
    """'1, 8' -> (1, 8); the values are checked by SpeedSettings.check."""
    try:
        return tuple(int(item) for item in text.replace(";", ",").split(",") if item.strip())
    except ValueError as exc:
        raise ExplorerError(f"Batch sizes must be comma-separated whole numbers such as 1,8 (got '{text}').") from exc


@dataclass(frozen=True)
class SpeedSettings:
    """What a speed measurement runs: the same prompts and steps for every model compared."""

    prompt_tokens: int = setting(64, "tokens in each prompt: the prefill", label="Prompt tokens (prefill)")
    new_tokens: int = setting(32, "decode steps after the prompt (greedy, KV cache, no early stop)", label="Decode steps")
    batch_sizes: tuple[int, ...] = setting((1, 8), "comma-separated batch sizes to prefill and decode at",
                                           parse=parse_sizes, label="Batch sizes")
    repeats: int = setting(3, "timed repeats of every model, interleaved (min and median reported)", label="Repeats")

    def __post_init__(self) -> None:
        object.__setattr__(self, "batch_sizes", tuple(int(b) for b in self.batch_sizes))

    def check(self) -> None:
        """Reject impossible settings before any model loads."""
        for name, value in (("prompt tokens", self.prompt_tokens), ("decode steps", self.new_tokens), ("repeats", self.repeats)):
            if value < 1:
                raise ExplorerError(f"The {name} must be at least 1 (got {value}).")
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise ExplorerError(f"Give batch sizes of at least 1, e.g. 1,8 (got {','.join(map(str, self.batch_sizes)) or 'none'}).")
        if len(set(self.batch_sizes)) != len(self.batch_sizes):
            raise ExplorerError(f"Each batch size once, please (got {','.join(map(str, self.batch_sizes))}).")

    def to_json(self) -> dict:
        return {**asdict(self), "batch_sizes": list(self.batch_sizes)}

    @classmethod
    def from_json(cls, data: dict) -> "SpeedSettings":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class Decoded:
    """One greedy decode: its tokens (the prefill's prediction, then one per step), its seconds, the
    cache it filled, and its logits when kept (the check)."""

    tokens: torch.Tensor  # [batch, steps + 1]
    prefill_seconds: float
    decode_seconds: float
    cache: DynamicCache
    logits: torch.Tensor | None  # [batch, steps + 1, vocab]


def _sync(device: torch.device) -> None:
    """Wait for queued GPU work, so a clock read after it times the work, not its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _device(model: torch.nn.Module) -> torch.device:
    return model.get_input_embeddings().weight.device


def prompts(model: torch.nn.Module, batch: int, tokens: int) -> torch.Tensor:
    """[batch, tokens] token ids drawn with a fixed seed from the model's vocabulary: timing does not
    depend on the words, and every model of a comparison reads the same ones."""
    vocab = model.get_input_embeddings().num_embeddings
    generator = torch.Generator().manual_seed(SEED + batch)
    return torch.randint(0, vocab, (batch, tokens), generator=generator).to(_device(model))


def _keeps_last_logits(model: torch.nn.Module) -> dict:
    """Ask for the prefill's last-position logits only, as generate() does, where the model allows:
    the head over every prompt position is work no decoder performs."""
    return {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}


def _prefill(model: torch.nn.Module, prompt: torch.Tensor, cache: DynamicCache) -> torch.Tensor:
    """The prompt into the cache; the last position's logits [batch, 1, vocab]."""
    return model(input_ids=prompt, past_key_values=cache, use_cache=True, **_keeps_last_logits(model)).logits[:, -1:]


def _step(model: torch.nn.Module, token: torch.Tensor, cache: DynamicCache) -> torch.Tensor:
    """One decode step: one token per sequence through the model and its cache; the logits [batch, 1, vocab]."""
    return model(input_ids=token, past_key_values=cache, use_cache=True).logits[:, -1:]


def decode(model: torch.nn.Module, prompt: torch.Tensor, steps: int, keep_logits: bool = False) -> Decoded:
    """Prefill `prompt` into a fresh KV cache, then `steps` greedy steps of one token per sequence;
    both phases timed (waiting for the GPU before each clock read). The caller holds `inference`."""
    device = prompt.device
    cache = DynamicCache(config=model.config)
    kept: list[torch.Tensor] = []
    _sync(device)
    started = time.perf_counter()
    logits = _prefill(model, prompt, cache)
    token = logits.argmax(-1)
    _sync(device)
    prefilled = time.perf_counter()
    tokens = [token]
    for _ in range(steps):
        if keep_logits:
            kept.append(logits.float())
        logits = _step(model, token, cache)
        token = logits.argmax(-1)
        tokens.append(token)
    _sync(device)
    ended = time.perf_counter()
    if keep_logits:
        kept.append(logits.float())
    return Decoded(torch.cat(tokens, 1), prefilled - started, ended - prefilled, cache, torch.cat(kept, 1) if kept else None)


def _timed(device: torch.device, work: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, float, float]:
    """(value, wall seconds, CPU seconds of this process) of `work()`, the GPU waited for."""
    _sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    value = work()
    _sync(device)
    return value, time.perf_counter() - wall, time.process_time() - cpu


def lockstep(models: dict[str, torch.nn.Module], prompt: torch.Tensor, steps: int, reverse: bool = False) -> dict[str, dict]:
    """One timed repeat of every model on `prompt`, interleaved step by step: every model's prefill,
    then every model's first decode step, every model's second (the order reversed at every step, and
    from the start when `reverse`), ... Each model's time is the sum of its own steps, taken at most
    a few steps apart from the others', so load that comes and goes on a shared machine hits all of
    them alike. Returns {label: {"prefill", "decode" (wall seconds), "prefill_cpu", "decode_cpu"}}:
    CPU seconds of this process beside the wall time, the part of it other processes cannot stretch."""
    device = prompt.device
    order = list(models)[::-1] if reverse else list(models)
    caches = {label: DynamicCache(config=model.config) for label, model in models.items()}
    spent = {label: dict.fromkeys(("prefill", "decode", "prefill_cpu", "decode_cpu"), 0.0) for label in models}
    tokens = {}
    with ExitStack() as held:
        for model in models.values():
            held.enter_context(inference(model))
        for label in order:
            tokens[label], wall, cpu = _timed(device, lambda: _prefill(models[label], prompt, caches[label]).argmax(-1))
            spent[label]["prefill"], spent[label]["prefill_cpu"] = wall, cpu
        for step in range(steps):
            for label in order if step % 2 == 0 else order[::-1]:
                tokens[label], wall, cpu = _timed(device, lambda: _step(models[label], tokens[label], caches[label]).argmax(-1))
                spent[label]["decode"] += wall
                spent[label]["decode_cpu"] += cpu
    return spent


def check_outputs(model: torch.nn.Module, prompt: torch.Tensor, steps: int) -> float:
    """The largest difference, relative to the largest logit, between the cached loop's logits and
    the model's normal forward (no cache) over the prompt and the tokens it generated; raises when
    they are not the same computation, so what gets timed is the model, not something else."""
    with inference(model):
        decoded = decode(model, prompt, steps, keep_logits=True)
        full = torch.cat([prompt, decoded.tokens[:, :-1]], 1)
        reference = model(input_ids=full, use_cache=False).logits[:, prompt.shape[1] - 1:].float()
    scale = max(1.0, reference.abs().max().item())
    difference = (decoded.logits - reference).abs().max().item() / scale
    dtype = next(model.parameters()).dtype
    if difference > TOLERANCE.get(dtype, HALF_TOLERANCE):
        raise ExplorerError(f"The timed decode loop does not reproduce the model's own forward (logits differ by "
                            f"{difference:.2g} of their scale): its timing would not be of this model; report this model.")
    return difference


def cache_bytes(cache: DynamicCache) -> int:
    """Bytes of every tensor the cache holds (keys and values of every layer)."""
    return sum(t.numel() * t.element_size() for layer in cache.layers for t in vars(layer).values()
               if isinstance(t, torch.Tensor))


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of the model's parameters and buffers, each shared tensor once (tied embeddings)."""
    return sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))


def _status_bytes(field: str) -> int | None:
    """A /proc/self/status size (VmRSS, VmHWM) in bytes; None off Linux."""
    try:
        line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(field + ":"))
    except (OSError, StopIteration):
        return None
    return int(line.split()[1]) * 1024


def _reset_peak_rss() -> int | None:
    """Hand freed heap pages back to the system (glibc's malloc_trim) and reset the process's peak
    resident size to its current one; returns that size (None where the kernel does not allow it)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the peak then misses memory the allocator kept
        pass
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return None
    return _status_bytes("VmRSS")


def memory(model: torch.nn.Module, prompt: torch.Tensor, steps: int) -> dict:
    """Weights, KV cache and the peak of one decode at `prompt`'s batch (see the module docstring):
    `peak_bytes` is the weights plus the pass's peak above them (CUDA: allocated tensors; CPU: the
    resident-size delta, cruder), `activations_bytes` that peak less the KV cache (CUDA only)."""
    device = prompt.device
    weights = weight_bytes(model)
    with inference(model):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            before = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            kv = cache_bytes(decode(model, prompt, steps).cache)
            above = torch.cuda.max_memory_allocated(device) - before
            return {"weights_bytes": weights, "kv_cache_bytes": kv, "activations_bytes": max(0, above - kv),
                    "peak_bytes": weights + above, "rss_peak_delta_bytes": None, "peak_source": "cuda max_memory_allocated"}
        rss = _reset_peak_rss()
        kv = cache_bytes(decode(model, prompt, steps).cache)
        peak = _status_bytes("VmHWM")
    above = peak - rss if rss is not None and peak is not None else None
    return {"weights_bytes": weights, "kv_cache_bytes": kv, "activations_bytes": None,
            "peak_bytes": weights + above if above is not None else None, "rss_peak_delta_bytes": above,
            "peak_source": "process resident size (VmHWM) above its level before the pass"}


def decode_parts(model: torch.nn.Module, prompt: torch.Tensor, steps: int) -> dict:
    """Milliseconds of a decode step's parts, timed inside real steps by hooks on the first and the
    last decoder layer: before the layers (embedding, masks, rotary set-up, the step's Python), the
    layers, and after them (final norm, LM head, argmax). Only the middle part shrinks when layers
    are removed. Each part's fastest step is kept: the least disturbed by other load, like the
    fastest repeat of the timings."""
    layers = decoder_layers(model)
    device = prompt.device
    marks: dict[str, float] = {}

    def mark(name: str) -> Callable:
        def hook(*_) -> None:
            _sync(device)
            marks[name] = time.perf_counter()
        return hook

    handles = [layers[0].register_forward_pre_hook(mark("first")), layers[-1].register_forward_hook(mark("last"))]
    parts: dict[str, list[float]] = {"before_layers": [], "layers": [], "after_layers": [], "step": []}
    try:
        with inference(model):
            cache = DynamicCache(config=model.config)
            token = _prefill(model, prompt, cache).argmax(-1)
            for _ in range(steps):
                _sync(device)
                started = time.perf_counter()
                token = _step(model, token, cache).argmax(-1)
                _sync(device)
                ended = time.perf_counter()
                for name, seconds in (("before_layers", marks["first"] - started), ("layers", marks["last"] - marks["first"]),
                                      ("after_layers", ended - marks["last"]), ("step", ended - started)):
                    parts[name].append(seconds * 1000)
    finally:
        for handle in handles:
            handle.remove()
    return {name: min(values) for name, values in parts.items()}


def _spread(values: list[float]) -> dict:
    return {"min": min(values), "median": statistics.median(values)}


def _timings(seconds: dict[str, list[float]], batch: int, settings: SpeedSettings) -> dict:
    """Per-token figures of one model at one batch size, from its repeats' seconds."""
    prefill, steps = seconds["prefill"], seconds["decode"]
    prompt_tokens = batch * settings.prompt_tokens
    return {
        "prefill_seconds": prefill, "decode_seconds": steps,
        "prefill_cpu_seconds": seconds["prefill_cpu"], "decode_cpu_seconds": seconds["decode_cpu"],
        "prefill_ms_per_token": {k: v * 1000 / prompt_tokens for k, v in _spread(prefill).items()},
        # the fastest run gives the highest throughput: "max" comes from the minimum time
        "decode_tokens_per_s": {"max": batch * settings.new_tokens / min(steps),
                                "median": batch * settings.new_tokens / statistics.median(steps)},
    }


def ideal_speedup(layers_before: int, layers_after: int) -> float:
    """L / (L - n): the speedup if the decoder layers were all of a forward's cost."""
    return layers_before / layers_after


def _comparison(reference: dict, other: dict, batches: tuple[int, ...]) -> dict:
    """Speedups of `other` over `reference` (time ratios of their fastest and median runs), the ideal,
    measured ÷ ideal, and the best speedup the reference's fixed per-step costs allow."""
    before, after = reference["layers"], other["layers"]
    ideal = ideal_speedup(before, after)
    speedups: dict = {"prefill": {}, "decode": {}, "prefill_cpu": {}, "decode_cpu": {}}
    for batch in map(str, batches):
        ours, theirs = other["batches"][batch], reference["batches"][batch]
        for phase in speedups:
            key = f"{phase}_seconds"
            speedups[phase][batch] = {"min": min(theirs[key]) / min(ours[key]),
                                      "median": statistics.median(theirs[key]) / statistics.median(ours[key])}
    parts = reference["decode_parts_ms"]
    fixed, per_layer = parts["before_layers"] + parts["after_layers"], parts["layers"] / before
    bound = (fixed + before * per_layer) / (fixed + after * per_layer)
    return {
        "layers_removed": before - after, "ideal": ideal, **speedups,
        "decode_vs_ideal": {batch: s["min"] / ideal for batch, s in speedups["decode"].items()},
        "prefill_vs_ideal": {batch: s["min"] / ideal for batch, s in speedups["prefill"].items()},
        "fixed_share": fixed / parts["step"],
        "head_share": parts["after_layers"] / parts["step"],
        "bound_with_fixed_costs": bound,
        "weights_saved_bytes": reference["memory"]["weights_bytes"] - other["memory"]["weights_bytes"],
        "kv_saved_bytes_per_token": reference["kv_bytes_per_token"] - other["kv_bytes_per_token"],
    }


def measure_speed(models: dict[str, torch.nn.Module], settings: SpeedSettings,
                  progress: Callable[[str], None] = lambda text: None,
                  should_stop: Callable[[], bool] = lambda: False) -> dict:
    """Time every model in `models` (label -> module; the first is the reference the others are
    compared with) as the module docstring says, and account for its memory.

    Returns {"models": {label: figures}, "comparisons": {label: speedups over the reference}, and the
    conditions: device, threads, the load average before and after}."""
    settings.check()
    first = next(iter(models.values()))
    device = _device(first)
    vocab = first.get_input_embeddings().num_embeddings
    if other := next((label for label, m in models.items() if m.get_input_embeddings().num_embeddings != vocab), None):
        raise ExplorerError(f"'{other}' has another vocabulary than the model it is compared with: compare a model with its own pruned versions.")
    load_before = os.getloadavg()
    inputs = {batch: prompts(first, batch, settings.prompt_tokens) for batch in settings.batch_sizes}
    figures: dict[str, dict] = {}
    for label, model in models.items():
        progress(f"checking {label}: the timed loop against its normal forward")
        difference = check_outputs(model, inputs[settings.batch_sizes[0]], min(settings.new_tokens, 8))
        with inference(model):
            for batch in settings.batch_sizes:  # warm-up: first-call allocations and kernel choices
                decode(model, inputs[batch], 2)
        figures[label] = {"layers": len(decoder_layers(model)), "parameters": parameter_count(model),
                          "check_max_difference": difference}
    seconds = {label: {b: {part: [] for part in PARTS} for b in settings.batch_sizes} for label in models}
    for repeat in range(settings.repeats):
        for batch in settings.batch_sizes:
            if should_stop():
                raise Cancelled("The speed measurement was cancelled.")
            for label, spent in lockstep(models, inputs[batch], settings.new_tokens, reverse=repeat % 2 == 1).items():
                for part in PARTS:
                    seconds[label][batch][part].append(spent[part])
        progress(f"timed repeat {repeat + 1} of {settings.repeats}")
    order = list(models)
    largest = max(settings.batch_sizes)
    for label, model in models.items():
        progress(f"memory and decode-step parts of {label}")
        used = memory(model, inputs[largest], settings.new_tokens)
        tokens = largest * (settings.prompt_tokens + settings.new_tokens)
        figures[label].update(
            batches={str(b): _timings(seconds[label][b], b, settings) for b in settings.batch_sizes},
            memory={**used, "batch": largest, "tokens": settings.prompt_tokens + settings.new_tokens},
            kv_bytes_per_token=used["kv_cache_bytes"] / tokens,
            decode_parts_ms=decode_parts(model, inputs[settings.batch_sizes[0]][:1], min(settings.new_tokens, 16)),
        )
    reference = figures[order[0]]
    return {
        "reference": order[0],
        "models": figures,
        "comparisons": {label: _comparison(reference, figures[label], settings.batch_sizes) for label in order[1:]},
        "settings": settings.to_json(),
        "device": str(device),
        "dtype": str(next(first.parameters()).dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
    }


def calibrate(model: torch.nn.Module) -> tuple[float, float]:
    """(seconds per prompt token, seconds per decode step) of a short batch-1 decode: what a page
    prices a measurement with before starting it."""
    prompt = prompts(model, 1, 16)
    with inference(model):
        decode(model, prompt, 1)
        run = decode(model, prompt, 3)
    return run.prefill_seconds / 16, run.decode_seconds / 3


def estimate_seconds(token_s: float, step_s: float, settings: SpeedSettings, models: int) -> float:
    """Rough seconds of `measure_speed` over `models` models of about this speed: each repeat prefills
    every batch's prompts and decodes its steps (a step at batch b costs at least one step and at
    least b tokens' worth); the check, the warm-up, the memory and parts passes add about two more."""
    per_repeat = sum(b * settings.prompt_tokens * token_s + settings.new_tokens * max(step_s, b * token_s)
                     for b in settings.batch_sizes)
    return models * (settings.repeats + 2) * per_repeat

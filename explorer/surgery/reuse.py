"""Pruned points that reuse the unpruned model's work: layers below a removed block compute
exactly what the unpruned model computes, so they need not run again.

A model with the block [s, s+n) removed computes, in its layers 0..s-1, exactly what the
unpruned model computes there: same weights, same inputs, and the model-level parts (scaled
embeddings, rotary embeddings, attention masks) run as before in the pruned model itself. So
`PrefixReuse` runs an evaluation once on the unpruned model while it records, for every call
of the model, the residual stream entering each layer some block starts at, and the KV-cache
entries the layers below write (on the model's device, spilled to CPU beyond
`DEVICE_BUDGET` bytes). Each pruned point then runs the same evaluation on a pruned view whose
layers 0..s-1 are replaced by `_Replay` modules: they write the recorded cache entries and hand
layer s-1's recorded output on, so only the layers after the block (then the final norm and
the head) run. The simple strategy then runs about one layer per point, top-cut none.

The evaluation must call the model with the same inputs in the same order on every model
(ours does: held-out loss and scoring are deterministic); every call is checked against the
recording, and a point whose calls differ, or whose cache cannot be replayed (a sliding-window
cache that dropped entries, a recurrent state), is measured on the full pruned model instead.
Healed or repaired points change weights, so they never reuse: only the pruned model does.
"""

from __future__ import annotations

from typing import Callable

import torch

from explorer.core.concurrency import exclusive
from explorer.lm.blocks import LayerSet
from explorer.lm.layers import decoder_layers, pruned_view
from explorer.lm.models import LoadedModel

DEVICE_BUDGET = 2 * 1024**3  # recorded bytes kept on the model's device; the rest goes to CPU
Evaluate = Callable[[LoadedModel], dict]


class _OutOfStep(Exception):
    """The pruned model was called with inputs the recording does not hold."""


def _input_ids(args: tuple, kwargs: dict) -> torch.Tensor | None:
    ids = kwargs.get("input_ids")
    return ids if ids is not None else (args[0] if args and isinstance(args[0], torch.Tensor) else None)


def _cache_length(cache, layer_idx: int) -> int:
    layers = getattr(cache, "layers", [])
    if layer_idx >= len(layers) or getattr(layers[layer_idx], "keys", None) is None:
        return 0
    return layers[layer_idx].keys.shape[-2]


class _Tape:
    """What the unpruned model computed, call by call: inputs, layer outputs, new cache entries."""

    def __init__(self, device: torch.device):
        self.device = device
        self.inputs: list[torch.Tensor] = []
        self.outputs: dict[int, list[torch.Tensor]] = {}  # start s -> per call, the output of layer s-1
        self.cache: list[dict[int, tuple[torch.Tensor, torch.Tensor]]] = []  # per call: layer -> (keys, values)
        self.replayable = True  # False once a cache was seen that cannot be replayed
        self.bytes = 0
        self.call = -1

    def keep(self, tensor: torch.Tensor) -> torch.Tensor:
        """The tensor detached, on the device while the budget lasts, else on CPU."""
        self.bytes += tensor.numel() * tensor.element_size()
        return tensor.detach() if self.bytes <= DEVICE_BUDGET else tensor.detach().to("cpu")


def record(loaded: LoadedModel, starts: set[int], evaluate: Evaluate) -> tuple[dict, _Tape]:
    """Run `evaluate` on the unpruned model, recording what points starting at `starts` reuse."""
    tape = _Tape(loaded.device)
    top = max(starts, default=0)
    tape.outputs = {s: [] for s in starts if s > 0}
    layers = decoder_layers(loaded.model)
    before: dict[int, int] = {}

    def on_call(module, args, kwargs):
        tape.call += 1
        ids = _input_ids(args, kwargs)
        tape.inputs.append(ids.detach().to("cpu") if ids is not None else None)
        tape.cache.append({})

    def layer_hooks(i: int):
        def pre(module, args, kwargs):
            cache = kwargs.get("past_key_values")
            if cache is not None:
                before[i] = _cache_length(cache, i)

        def post(module, args, kwargs, output):
            if i + 1 in tape.outputs:
                if not isinstance(output, torch.Tensor):
                    tape.replayable = False
                else:
                    tape.outputs[i + 1].append(tape.keep(output))
            cache = kwargs.get("past_key_values")
            if cache is None:
                return
            hidden = args[0] if args else kwargs["hidden_states"]
            added = _cache_length(cache, i) - before.pop(i, 0)
            if added != hidden.shape[-2]:  # a sliding window dropped entries, or no attention cache at all
                tape.replayable = False
                return
            layer = cache.layers[i]
            tape.cache[tape.call][i] = (tape.keep(layer.keys[..., -added:, :]), tape.keep(layer.values[..., -added:, :]))

        return pre, post

    with exclusive(loaded.model):  # no other caller runs (or deep-copies) the model while these hooks are on
        handles = [loaded.model.register_forward_pre_hook(on_call, with_kwargs=True)]
        for i in range(top):
            pre, post = layer_hooks(i)
            handles.append(layers[i].register_forward_pre_hook(pre, with_kwargs=True))
            handles.append(layers[i].register_forward_hook(post, with_kwargs=True))
        try:
            metrics = evaluate(loaded)
        finally:
            for handle in handles:
                handle.remove()
    return metrics, tape


class _Replay(torch.nn.Module):
    """Stands in for unpruned layer `layer_idx` < s: writes its recorded cache entries, and the
    last one (s-1) returns its recorded output, the residual stream entering layer s."""

    def __init__(self, tape: _Tape, layer_idx: int, start: int, original: torch.nn.Module):
        super().__init__()
        self.tape, self.layer_idx, self.start = tape, layer_idx, start
        if hasattr(original, "attention_type"):  # some models pick each layer's mask by it
            self.attention_type = original.attention_type

    def forward(self, hidden_states, *args, **kwargs):
        call = self.tape.call
        cache = kwargs.get("past_key_values")
        if cache is not None:
            if self.layer_idx not in self.tape.cache[call]:
                raise _OutOfStep(f"call {call} has no recorded cache for layer {self.layer_idx}")
            keys, values = self.tape.cache[call][self.layer_idx]
            cache.update(keys.to(hidden_states.device), values.to(hidden_states.device), self.layer_idx)
        if self.layer_idx == self.start - 1:
            return self.tape.outputs[self.start][call].to(hidden_states.device)
        return hidden_states


def _replaying(view: LoadedModel, tape: _Tape, start: int) -> list:
    """Swap the view's layers 0..start-1 for replays and follow its calls; returns the hook handle."""
    layers = decoder_layers(view.model)
    for i in range(start):
        layers[i] = _Replay(tape, i, start, layers[i])
    tape.call = -1

    def on_call(module, args, kwargs):
        tape.call += 1
        ids = _input_ids(args, kwargs)
        if tape.call >= len(tape.inputs) or ids is None or not torch.equal(ids.detach().to("cpu"), tape.inputs[tape.call]):
            raise _OutOfStep(f"call {tape.call} differs from the recording")

    return [view.model.register_forward_pre_hook(on_call, with_kwargs=True)]


class PrefixReuse:
    """Metrics of pruned views of `loaded`, reusing one recorded unpruned evaluation.

    `evaluate` maps a model to its metrics (held-out loss, task accuracy, ...); `starts` are the
    block starts the points will use. `base` holds the unpruned model's own metrics (the
    recording run), `replayed` counts the points measured by replay."""

    def __init__(self, loaded: LoadedModel, starts: set[int], evaluate: Evaluate):
        self.loaded, self.evaluate = loaded, evaluate
        self.base, self.tape = record(loaded, starts, evaluate)
        self.replayed = 0

    def measure(self, block: LayerSet, prepare: Callable[[LoadedModel], None] | None = None, changed: int | None = None) -> dict:
        """`evaluate` of `loaded` without `block` (any `LayerSet`): equal to the full pruned forward
        (within float rounding), running only the layers from the first one it changes where the
        recording allows.
        `prepare` edits the pruned view before it runs, changing no layer below `changed` (a linear
        repair folds its map into layer start - 1): those layers still replay."""
        if block.empty and prepare is None:
            return self.base
        replay = block.start if changed is None else min(changed, block.start)

        def view() -> LoadedModel:
            pruned = pruned_view(self.loaded, block)
            if prepare is not None:
                prepare(pruned)
            return pruned

        if replay == 0 or replay not in self.tape.outputs or not self.tape.replayable:
            return self.evaluate(view())
        replaying = view()
        handles = _replaying(replaying, self.tape, replay)
        try:
            metrics = self.evaluate(replaying)
        except _OutOfStep:
            return self.evaluate(view())
        finally:
            for handle in handles:
                handle.remove()
        self.replayed += 1
        return metrics

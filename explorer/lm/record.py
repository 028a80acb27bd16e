"""The in-memory recording pass: one forward per batch whose hooks keep the selected tokens of the
residual stream entering every decoder layer and leaving the last (x^0 .. x^L, before the final
norm), and with `sublayers` also the stream between each layer's attention and MLP.
`LoadedModel.token_states` runs it; the streamed model gives the same states its own way."""

from __future__ import annotations

from typing import Callable, Iterator

import torch

from explorer.core.errors import ExplorerError
from explorer.lm.data import batches, pad_batch
from explorer.lm.forward import InMemory
from explorer.lm.layers import decoder_layers
from explorer.lm.sublayers import check_sublayers, mid_norm
from explorer.lm.tokens import take_tokens, token_index

Progress = Callable[[int, int], None]


class StateRecorder:
    """Hooks that keep the selected tokens (`TOKENS`) of x^0 (input of layer 0) and x^(l+1)
    (output of layer l): [batch, hidden] per layer for the last token, never [batch, tokens, hidden].
    With `sublayers`, also h^l, the stream after layer l's attention (the input of its MLP's
    norm, `sublayers.mid_norm`), so the states run x^0, h^0, x^1, h^1, ..., x^L (2L + 1)."""

    def __init__(self, model: torch.nn.Module, tokens: str = "last", sublayers: bool = False):
        if sublayers:
            check_sublayers(model)
        self.layers = decoder_layers(model)
        self.sublayers = sublayers
        self.tokens = tokens
        self.index: torch.Tensor | None = None
        self.states: list[torch.Tensor] = []
        self.handles = []

    def __enter__(self) -> "StateRecorder":
        def pre_hook(_module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            self.states.append(take_tokens(hidden, self.index))

        def post_hook(_module, _args, output):
            hidden = output[0] if isinstance(output, tuple) else output
            self.states.append(take_tokens(hidden, self.index))

        def mid_hook(_module, args):
            self.states.append(take_tokens(args[0], self.index))

        self.handles.append(self.layers[0].register_forward_pre_hook(pre_hook, with_kwargs=True))
        self.handles.extend(layer.register_forward_hook(post_hook) for layer in self.layers)
        if self.sublayers:
            self.handles.extend(mid_norm(layer).register_forward_pre_hook(mid_hook) for layer in self.layers)
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()

    def collect(self, mask: torch.Tensor) -> None:
        # The index lives on the mask's device, so the per-layer hooks never copy (and sync) from the host.
        self.index = token_index(mask, self.tokens)
        self.states = []

    def stacked(self) -> torch.Tensor:
        return torch.stack([s.to(self.states[0].device) for s in self.states])


def _input_device(model: torch.nn.Module) -> torch.device:
    return model.get_input_embeddings().weight.device


def recorded_states(
    loaded: InMemory, samples: list[list[int]], batch_size: int, tokens: str, progress: Progress | None,
    sublayers: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(states [L+1, selected tokens, H], attention mask [B, T]) per batch from one in-memory forward
    each; [2L+1, ...] with `sublayers` (see `StateRecorder`)."""
    model = loaded.model
    pad_id = loaded.tokenizer.pad_token_id or 0
    device = _input_device(model)
    done = 0
    with StateRecorder(model, tokens, sublayers) as recorder:
        for chunk in batches(samples, batch_size):
            input_ids, mask = (t.to(device) for t in pad_batch(chunk, pad_id))
            recorder.collect(mask)
            try:
                model.base_model(input_ids=input_ids, attention_mask=mask, use_cache=False)
            except torch.OutOfMemoryError as exc:
                raise ExplorerError(
                    f"Out of memory with batch size {batch_size}: use a smaller batch, shorter sequences or 4-bit loading."
                ) from exc
            yield recorder.stacked(), mask
            done += len(chunk)
            if progress:
                progress(done, len(samples))

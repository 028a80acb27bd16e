"""The in-memory model's batched forward operations, the ones `LoadedModel` offers the compute
code (a streamed model offers the same, explorer.lm.stream): logits of padded batches, and the
log-probs of many continuations after shared prefixes (lm-eval's `loglikelihood`), with a few-shot
header run once as a KV cache and the LM head only where scoring reads.

Requests are grouped by the tokens before their first scored position: the answers to one
question share its whole context. Each distinct context runs once, right-padded
(`explorer.lm.data.pad_batch`) in batches sorted by length, with the LM head only on its last token
(the [batch, tokens, vocab] logits of a 5-shot prompt would otherwise dominate memory); the
answers' remaining tokens then run on its KV cache. A 4-choice cloze question thus costs about
one pass over its context instead of four.

Contexts that share a long token prefix (a few-shot header: MMLU's subject line and five solved
questions, the quiz's demonstrations, a classifier's examples) share more: the prefix runs once
as a KV cache, and every batch of the questions after it runs only their own tokens on a
broadcast copy (`_shared_clusters`, `_expanded`). Exact for a causal model, since the shared
tokens' states do not depend on what follows; where a cache cannot carry right padding (a
sliding-window or recurrent cache) every context runs whole instead.
"""

from __future__ import annotations

import copy
import inspect
from contextlib import contextmanager
from typing import Iterator, Protocol

import torch
from transformers.cache_utils import DummyLayer, DynamicLayer

from explorer.core.concurrency import exclusive
from explorer.lm.data import batches, check_settings, pad_batch


class InMemory(Protocol):
    """What these operations read of a model (a `LoadedModel` is one): its module, tokenizer and device."""

    model: torch.nn.Module
    tokenizer: object

    @property
    def device(self) -> torch.device: ...


MIN_SHARED = 16  # shortest token prefix worth a KV cache of its own (one extra forward per cluster)


def prefix_token_id(tokenizer) -> int:
    """The token lm-eval conditions an empty context on: BOS, or EOS when there is none."""
    return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id


@contextmanager
def inference(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode without gradients, restoring the previous mode: a model scored in the middle
    of healing must not apply LoRA dropout to its scores, nor stay in eval mode afterwards."""
    with exclusive(model):  # one scorer at a time per shared model (explorer.core.concurrency)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            model.train(was_training)


def _forward_parameters(model: torch.nn.Module) -> set[str]:
    """Keyword arguments the underlying model's forward takes (through a peft wrapper, whose own
    forward only passes **kwargs on)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return set(inspect.signature(base.forward).parameters)


def _mixes_prefix_lengths(loaded: InMemory, parameters: set[str]) -> bool:
    """Whether prefixes of different lengths may share a batch before their tails run on the cache.

    Right-padded prefixes leave padding slots inside the cache; the tails skip them through the
    attention mask and take their true positions from `position_ids`. That holds for a plain
    attention cache (transformers' DynamicLayer; a dropped attention's DummyLayer holds nothing)
    in a model taking position_ids; a recurrent or sliding-window cache would carry the padding
    along, so such a model batches equal lengths only."""
    if "position_ids" not in parameters:
        return False
    probe = torch.tensor([[prefix_token_id(loaded.tokenizer)]], device=loaded.device)
    cache = loaded.model(input_ids=probe, use_cache=True).past_key_values
    layers = getattr(cache, "layers", [None])
    return cache is not None and all(type(layer) in (DynamicLayer, DummyLayer) for layer in layers) and DynamicLayer in map(type, layers)


def _prefix_batches(
    groups: list[tuple[list[int], list[int]]], batch_size: int, mix_lengths: bool, per_prefix: bool = False
) -> Iterator[list[int]]:
    """Indices into `groups` (prefix, request indices), longest prefix first (lm-eval's order: an
    out-of-memory error shows on the first batch), at most `batch_size` requests a batch (at
    least one group), or `batch_size` prefixes with all their requests when `per_prefix` (prefixes
    after a shared cache: a few tokens each, so rows cost a fraction of a whole request's),
    equal prefix lengths only unless `mix_lengths`."""
    check_settings(1, 2, batch_size)
    batch: list[int] = []
    size = (lambda g: 1) if per_prefix else (lambda g: len(groups[g][1]))
    for g in sorted(range(len(groups)), key=lambda g: -len(groups[g][0])):
        full = sum(size(i) for i in batch) + size(g) > batch_size
        if batch and (full or not mix_lengths and len(groups[g][0]) != len(groups[batch[0]][0])):
            yield batch
            batch = []
        batch.append(g)
    if batch:
        yield batch


def _expanded(cache, batch: int):
    """A batch-`batch` view of a batch-1 cache that the caller's forward may extend: the cache
    object and its layers are shallow copies and the tensors broadcast views (a DynamicLayer
    extends by concatenation into new tensors), so the shared prefix's own cache is never mutated
    and serves every batch that follows."""
    view = copy.copy(cache)
    view.layers = []
    for layer in cache.layers:
        layer = copy.copy(layer)
        if layer.keys is not None:  # a DummyLayer (a dropped attention, explorer.lm.sublayers) holds none
            layer.keys = layer.keys.expand(batch, *layer.keys.shape[1:])
            layer.values = layer.values.expand(batch, *layer.values.shape[1:])
        view.layers.append(layer)
    return view


@contextmanager
def _head_at(model: torch.nn.Module, rows: torch.Tensor, columns: torch.Tensor) -> Iterator[list[bool]]:
    """While open, the model's LM head sees only the hidden states at (rows[k], columns[k]) and
    its logits come out [1, K, V]: scoring needs a few positions of each padded row (a prefix's
    last token, an answer's own tokens), and the head costs several decoder layers per position
    (a 49k-word vocabulary against a 576-wide model). Any elementwise step after the head (Gemma's
    soft-capping) still applies. Yields a flag list that is non-empty once the head was called
    as a module; a model that multiplies by its embedding directly gives full logits instead."""
    fired: list[bool] = []

    def pick(module, args):
        fired.append(True)
        hidden = args[0]
        return (hidden[rows.to(hidden.device), columns.to(hidden.device)][None], *args[1:])

    handle = model.get_output_embeddings().register_forward_pre_hook(pick)
    try:
        yield fired
    finally:
        handle.remove()


def logits_at(model: torch.nn.Module, rows: torch.Tensor, columns: torch.Tensor, **inputs) -> tuple[object, torch.Tensor]:
    """(the model's output, float32 logits [K, V] at positions (rows[k], columns[k]) of its input),
    with the LM head run on those positions only (`_head_at`)."""
    with _head_at(model, rows, columns) as fired:
        out = model(**inputs)
    return out, (out.logits[0] if fired else out.logits[rows, columns.to(out.logits.device)]).float()


def _shared_prefix_logprobs(
    loaded: InMemory, parameters: set[str], prefixes: list[list[int]], tails: list[list[list[int]]],
    shared: tuple[object, int] | None = None,
) -> list[list[torch.Tensor]]:
    """For each prefix and each of its tails: float32 log-probs [1 + len(tail), V] of the positions
    from the prefix's last token to the tail's last token (position t predicts token t + 1).

    The prefixes run once, right-padded, keeping their KV cache and only the logits of their last
    token; the cache is then repeated per tail and the tails run on it in one batch, the head on
    their real tokens only. Scoring k answers to one question thus costs one pass over the
    question, not k. `parameters`: what the model's forward accepts (`_forward_parameters`).
    `shared`: (KV cache, length) of tokens that come before every prefix (a few-shot header,
    `_shared_cache`); the prefixes then hold only what follows it and run on a broadcast copy of
    that cache."""
    model, pad_id = loaded.model, loaded.tokenizer.pad_token_id or 0
    input_ids, mask = pad_batch(prefixes, pad_id)
    lengths = mask.sum(dim=1)
    flat = [tail for group in tails for tail in group]
    offset, extra = 0, {}
    if shared is not None:
        cache, offset = shared
        mask = torch.cat([torch.ones(len(prefixes), offset, dtype=mask.dtype), mask], dim=1)
        extra = {"past_key_values": _expanded(cache, len(prefixes)),
                 "position_ids": (offset + torch.arange(input_ids.shape[1])).expand(len(prefixes), -1).to(loaded.device)}
    out, last = logits_at(model, torch.arange(len(prefixes)), lengths - 1, input_ids=input_ids.to(loaded.device),
                          attention_mask=mask.to(loaded.device), use_cache=any(flat), **extra)
    last = torch.log_softmax(last, dim=-1)
    result = [[last[b, None]] * len(group) for b, group in enumerate(tails)]
    if not any(flat):
        return result
    owner = torch.tensor([b for b, group in enumerate(tails) for _ in group])
    cache = out.past_key_values
    cache.batch_select_indices(owner)  # a CPU index works for every device the layers sit on (device_map="auto")
    tail_ids, tail_mask = pad_batch(flat, pad_id)
    positions = {}  # without position_ids the prefixes have one length (_mixes_prefix_lengths): default positions
    if "position_ids" in parameters:
        positions = {"position_ids": (offset + lengths[owner, None] + torch.arange(tail_ids.shape[1])).to(loaded.device)}
    real = tail_mask.bool()
    rows, columns = real.nonzero(as_tuple=True)  # row-major: each tail's tokens in order, tail after tail
    _, logits = logits_at(
        model, rows, columns, input_ids=tail_ids.to(loaded.device),
        attention_mask=torch.cat([mask[owner], tail_mask], dim=1).to(loaded.device), past_key_values=cache,
        use_cache=False, **positions,
    )
    pieces = iter(torch.log_softmax(logits, dim=-1).split([len(tail) for tail in flat]))
    for b, group in enumerate(tails):
        for k in range(len(group)):
            result[b][k] = torch.cat([last[b, None], next(pieces)])
    return result


def _common_length(a: list[int], b: list[int]) -> int:
    """How many leading tokens two sequences share."""
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)


def _shared_clusters(prefixes: list[list[int]]) -> list[tuple[list[int], int]]:
    """(indices into `prefixes`, length of the token prefix they all share) covering every prefix.

    Sorted token sequences put the questions of one few-shot header side by side; a run of
    neighbours stays one cluster while what they share stays at least half of what the run
    started with and at least MIN_SHARED tokens, so a 5-shot subject header (hundreds of tokens)
    is one cluster and the next subject, sharing only "The following are...", starts another.
    The shared length leaves each prefix at least its last token (whose logits are needed)."""
    order = sorted(range(len(prefixes)), key=lambda i: prefixes[i])
    clusters: list[tuple[list[int], int]] = []
    members: list[int] = []
    common = 0
    for i in order:
        if members:
            joined = min(common, _common_length(prefixes[members[-1]], prefixes[i]))
            if joined >= MIN_SHARED and 2 * joined >= common:
                members.append(i)
                common = joined
                continue
            clusters.append((members, common))
        members, common = [i], len(prefixes[i])
    if members:
        clusters.append((members, common))
    return [(m, min(c, min(len(prefixes[i]) for i in m) - 1) if len(m) > 1 else 0) for m, c in clusters]


def _shared_cache(loaded: InMemory, tokens: list[int]):
    """The KV cache of `tokens` (batch 1): what every prefix of a cluster starts with, run once."""
    ids = torch.tensor([tokens], device=loaded.device)
    keep = {"logits_to_keep": 1} if "logits_to_keep" in _forward_parameters(loaded.model) else {}
    return loaded.model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True, **keep).past_key_values


def score_groups(
    loaded: InMemory, groups: list[tuple[list[int], list[int]]], tails: list[list[int]], batch_size: int
) -> Iterator[tuple[int, torch.Tensor]]:
    """(request index, log-probs from its prefix's last token on) for every request, where
    `groups` pairs each distinct prefix with its requests and `tails[i]` follows request i's prefix.

    Prefixes sharing a long token prefix (`_shared_clusters`: a few-shot header) run it once as a
    KV cache and only their own tokens after it, when the model's cache allows it
    (`_mixes_prefix_lengths`: a plain attention cache with explicit positions; otherwise every
    prefix runs whole). A causal model's states of the shared tokens do not
    depend on what follows, so the log-probs equal the unshared computation."""
    parameters = _forward_parameters(loaded.model)
    plain = _mixes_prefix_lengths(loaded, parameters)
    mix = not any(tails) or plain  # without tails, padding is harmless (causal attention)
    clusters = _shared_clusters([prefix for prefix, _ in groups]) if plain else [(list(range(len(groups))), 0)]
    for members, length in clusters:
        shared = (_shared_cache(loaded, groups[members[0]][0][:length]), length) if length else None
        cut = [(groups[g][0][length:], groups[g][1]) for g in members]
        for batch in _prefix_batches(cut, batch_size, mix, per_prefix=bool(length)):
            logprobs = _shared_prefix_logprobs(
                loaded, parameters, [cut[g][0] for g in batch], [[tails[i] for i in cut[g][1]] for g in batch], shared
            )
            for g, group_logprobs in zip(batch, logprobs):
                yield from zip(cut[g][1], group_logprobs)


def logits_batches(loaded: InMemory, ids: list[list[int]], batch_size: int) -> Iterator[tuple[torch.Tensor, ...]]:
    """(input_ids, mask, logits) per padded batch, one forward each."""
    for chunk in batches(ids, batch_size):
        input_ids, mask = pad_batch(chunk, loaded.tokenizer.pad_token_id or 0)
        input_ids, mask = input_ids.to(loaded.device), mask.to(loaded.device)
        yield input_ids, mask, loaded.model(input_ids=input_ids, attention_mask=mask, use_cache=False).logits

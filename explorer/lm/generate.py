"""Text generation: batched decoding on a KV cache, for generation-based evaluation (what pruning
loses that log-likelihood scoring hides) and the side-by-side completions of pruned, repaired and
healed models.

lm-eval's `generate_until` (Hugging Face `generate` underneath) is the reference, and greedy
outputs equal its outputs token for token (tests/test_generate.py). What differs is the work done:

- Prompts sharing a few-shot header are grouped (explorer.lm.forward's clusters, as likelihood
  scoring groups them); the header runs once as a batch-1 KV cache, broadcast to every row of every
  batch of its group, where lm-eval runs it once per row. Each group runs in batches of
  `batch_size`, longest prompts first.
- Each row's own tokens follow, left-padded: [shared prefix][padding][own tokens]. Padding is
  masked and positions are explicit (counted as if there were none), so the result equals the
  row run alone, and every row's last token sits in the last column.
- Each step feeds one token per row. A row that stops (end of sequence, a stop string, or
  `max_new_tokens`) leaves the batch with its cache rows; lm-eval's `generate` keeps computing
  finished rows until the whole batch stops. Waiting prompts do not join a batch in flight
  (continuous batching): measured on the embedded model on a CPU, joining took as many forward
  steps and more time (the joined caches' padding and the extra prefills), since a step costs
  about the same with 4 rows as with 8.

Stop strings act as lm-eval's `until`: a row stops as soon as its decoded continuation contains
one, and its text is the continuation cut before the first of them (the tokenizer's end-of-sequence
text always counts as one, as lm-eval adds it). The token ids run through the token that completed
the stop. Only a model in memory decodes; a layer-streamed model would read every layer's weights
from disk for each token.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

import torch
from transformers.cache_utils import DynamicLayer

from explorer.core.errors import ExplorerError
from explorer.lm.data import batches, check_settings
from explorer.lm.forward import _expanded, _shared_clusters, inference
from explorer.lm.models import LoadedModel


@dataclass(frozen=True)
class Decoding:
    """How to continue a prompt. temperature 0 is greedy (argmax, what evaluation uses); above 0 the
    next token is sampled from softmax(logits / temperature), cut to the smallest set of most likely
    tokens holding `top_p` of the probability (nucleus sampling). Sampling is seeded per prompt
    (`seed` and the prompt's position), so a prompt's sample does not depend on the batch it ran in."""

    max_new_tokens: int = 32
    until: tuple[str, ...] = ()
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0

    def check(self) -> None:
        if self.max_new_tokens < 1:
            raise ExplorerError(f"max_new_tokens must be at least 1 (got {self.max_new_tokens}).")
        if self.temperature < 0:
            raise ExplorerError(f"The temperature must be 0 (greedy) or more (got {self.temperature}).")
        if not 0 < self.top_p <= 1:
            raise ExplorerError(f"top_p must be in (0, 1] (got {self.top_p}).")


@dataclass
class Generation:
    """One prompt's continuation: `text` as lm-eval returns it (decoded without special tokens, cut
    before the first stop string), `token_ids` every token generated (through the one that ended
    it), `finish` why it stopped: "eos" (an end-of-sequence token), "stop" (a stop string) or
    "length" (max_new_tokens)."""

    text: str
    token_ids: list[int]
    finish: str


def cut_at_stops(text: str, stops: tuple[str, ...] | list[str]) -> str:
    """The text before the first occurrence of any stop string (empty ones ignored), as lm-eval's
    `postprocess_generated_text` cuts a generation."""
    for stop in stops:
        if stop:
            text = text.split(stop)[0]
    return text


def eos_ids(loaded: LoadedModel) -> set[int]:
    """The tokens that end a sequence: the generation config's (what Hugging Face `generate` stops
    on), else the tokenizer's."""
    config = getattr(loaded.model, "generation_config", None)
    found = getattr(config, "eos_token_id", None)
    if found is None:
        found = loaded.tokenizer.eos_token_id
    return set(found if isinstance(found, (list, tuple)) else [] if found is None else [found])


def _check_in_memory(loaded) -> None:
    if not isinstance(loaded, LoadedModel):
        raise ExplorerError("Generation needs the model in memory: a layer-streamed model would read every layer from "
                            "disk for each new token, so load it without --stream to generate.")


def generate(loaded: LoadedModel, prompts: list[str], decoding: Decoding = Decoding(), batch_size: int = 8,
             progress: Callable[[int, int], None] | None = None) -> list[Generation]:
    """Each prompt's continuation, in the prompts' order (the prompt encoded as the tokenizer does by
    default, as lm-eval encodes a context). `progress(done, total)` hears after each batch."""
    _check_in_memory(loaded)
    return generate_ids(loaded, [loaded.tokenizer(prompt)["input_ids"] for prompt in prompts], decoding, batch_size, progress)


def generate_ids(loaded: LoadedModel, encoded: list[list[int]], decoding: Decoding = Decoding(), batch_size: int = 8,
                 progress: Callable[[int, int], None] | None = None) -> list[Generation]:
    """`generate` for prompts given as token ids (held-out text cut at a token count)."""
    _check_in_memory(loaded)
    decoding.check()
    check_settings(1, 2, batch_size)
    if any(not ids for ids in encoded):
        raise ExplorerError("Give a prompt to complete: an empty prompt has no token to continue from.")
    limit = getattr(loaded.model.config, "max_position_embeddings", None)
    if limit and (longest := max((len(ids) for ids in encoded), default=0)) + decoding.max_new_tokens > limit:
        raise ExplorerError(f"A prompt of {longest} tokens plus {decoding.max_new_tokens} new tokens exceeds the model's "
                            f"{limit} positions: shorten the prompt or ask for fewer tokens.")
    stops = tuple(decoding.until) + ((loaded.tokenizer.eos_token,) if loaded.tokenizer.eos_token else ())
    results: list[Generation | None] = [None] * len(encoded)
    decoder = _Decoder(loaded, decoding, stops)
    done = 0
    with inference(loaded.model):
        for members, length in _groups(encoded, decoder.positions):
            shared = decoder.shared_cache(encoded[members[0]][:length]) if length else None
            length = length if shared is not None else 0
            for batch in batches(sorted(members, key=lambda i: -len(encoded[i])), batch_size):
                for index, generation in zip(batch, decoder.run([encoded[i][length:] for i in batch], batch, length, shared)):
                    results[index] = generation
                done += len(batch)
                if progress:
                    progress(done, len(encoded))
    return results  # type: ignore[return-value]


def _groups(encoded: list[list[int]], shares: bool) -> list[tuple[list[int], int]]:
    """(prompt indices, length of the token prefix they share) to decode together: the prompts of
    one few-shot header (explorer.lm.forward's clusters), then every prompt sharing nothing in one
    group. Each group runs in batches, longest prompts first (lm-eval's order)."""
    clusters = _shared_clusters(encoded) if shares else [(list(range(len(encoded))), 0)]
    alone = [i for members, length in clusters if not length for i in members]
    return [(members, length) for members, length in clusters if length] + ([(alone, 0)] if alone else [])


def complete(loaded: LoadedModel, prompt: str, max_new_tokens: int = 24) -> str:
    """Greedy continuation of `prompt` up to the end of sequence (deterministic, so two models'
    answers compare)."""
    if not prompt.strip():
        raise ExplorerError("Give a prompt to complete.")
    return generate(loaded, [prompt], Decoding(max_new_tokens=max_new_tokens), batch_size=1)[0].text


class _Decoder:
    """The decoding loop of one `generate` call, batch by batch."""

    def __init__(self, loaded: LoadedModel, decoding: Decoding, stops: tuple[str, ...]):
        self.loaded, self.decoding, self.stops = loaded, decoding, stops
        self.eos = eos_ids(loaded)
        self.pad = loaded.tokenizer.pad_token_id if loaded.tokenizer.pad_token_id is not None else 0
        base = loaded.model.get_base_model() if hasattr(loaded.model, "get_base_model") else loaded.model
        parameters = set(inspect.signature(base.forward).parameters)
        self.positions = "position_ids" in parameters
        self.keep_last = {"logits_to_keep": 1} if "logits_to_keep" in parameters else {}

    def shared_cache(self, tokens: list[int]):
        """The batch-1 cache of a shared prefix, or None where the model's cache cannot carry a
        padding gap (a sliding-window or recurrent cache; then every row runs whole)."""
        ids = torch.tensor([tokens], device=self.loaded.device)
        cache = self.loaded.model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True,
                                  **self.keep_last).past_key_values
        plain = cache is not None and all(type(layer) is DynamicLayer for layer in getattr(cache, "layers", [None]))
        return cache if plain else None

    def run(self, own: list[list[int]], indices: list[int], length: int = 0, shared=None) -> list[Generation]:
        """Decode one batch: each row's tokens after the `length` shared ones whose cache is `shared`;
        `indices` are the prompts' positions (the sampling seeds)."""
        device, size = self.loaded.device, len(own)
        width = max(len(row) for row in own)
        input_ids = torch.full((size, width), self.pad, dtype=torch.long)
        mask = torch.zeros((size, width), dtype=torch.long)
        for b, row in enumerate(own):  # left padding: every row's last token in the last column
            input_ids[b, width - len(row):] = torch.tensor(row)
            mask[b, width - len(row):] = 1
        positions = length + (mask.cumsum(dim=1) - 1).clamp(min=0)
        attention = torch.cat([torch.ones(size, length, dtype=torch.long), mask], dim=1).to(device)
        extra = {"position_ids": positions.to(device)} if self.positions else {}
        if shared is not None:
            extra["past_key_values"] = _expanded(shared, size)
        out = self.loaded.model(input_ids=input_ids.to(device), attention_mask=attention, use_cache=True,
                                **extra, **self.keep_last)
        return self._continue(out, attention, positions[:, -1].to(device) + 1, indices)

    def _continue(self, out, attention: torch.Tensor, next_position: torch.Tensor, indices: list[int]) -> list[Generation]:
        """The step loop after the prompts' forward: pick, record, drop finished rows, feed the rest."""
        decoding, cache = self.decoding, out.past_key_values
        generators = [torch.Generator().manual_seed((decoding.seed * 1_000_003 + i) % 2**32) if decoding.temperature else None
                      for i in indices]
        generated: list[list[int]] = [[] for _ in indices]
        finished: list[str | None] = [None] * len(indices)
        active = list(range(len(indices)))  # batch rows still decoding, in cache order
        logits = out.logits[:, -1].float()
        for step in range(decoding.max_new_tokens):
            tokens = _pick(logits, decoding, [generators[b] for b in active])
            for b, token in zip(active, tokens.tolist()):
                generated[b].append(token)
                finished[b] = self._finish(generated[b], step + 1)
            keep = [k for k, b in enumerate(active) if finished[b] is None]
            if not keep:
                break
            if len(keep) < len(active):
                index = torch.tensor(keep, device=attention.device)
                cache.batch_select_indices(index)
                attention, next_position, tokens = attention[index], next_position[index], tokens[index]
                active = [active[k] for k in keep]
            attention = torch.cat([attention, attention.new_ones(len(active), 1)], dim=1)
            extra = {"position_ids": next_position[:, None]} if self.positions else {}
            out = self.loaded.model(input_ids=tokens[:, None].to(attention.device), attention_mask=attention,
                                    past_key_values=cache, use_cache=True, **extra)
            cache, logits, next_position = out.past_key_values, out.logits[:, -1].float(), next_position + 1
        tokenizer = self.loaded.tokenizer
        return [Generation(cut_at_stops(tokenizer.decode(ids, skip_special_tokens=True), self.stops), ids, finish or "length")
                for ids, finish in zip(generated, finished)]

    def _finish(self, ids: list[int], count: int) -> str | None:
        if ids[-1] in self.eos:
            return "eos"
        if self.stops:
            text = self.loaded.tokenizer.decode(ids, skip_special_tokens=True)
            if any(stop and stop in text for stop in self.stops):
                return "stop"
        return "length" if count >= self.decoding.max_new_tokens else None


def _pick(logits: torch.Tensor, decoding: Decoding, generators: list[torch.Generator]) -> torch.Tensor:
    """The next token of each row: argmax when greedy, else a seeded draw from the tempered,
    nucleus-cut distribution (one generator per row)."""
    if decoding.temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits / decoding.temperature, dim=-1).cpu()
    if decoding.top_p < 1:
        ordered, order = probs.sort(dim=-1, descending=True)
        before = ordered.cumsum(dim=-1) - ordered  # the mass of the tokens more likely than each
        ordered[before >= decoding.top_p] = 0  # keep the smallest top set reaching top_p (at least one token)
        probs = torch.zeros_like(probs).scatter_(-1, order, ordered)
    draws = [torch.multinomial(row, 1, generator=generator) for row, generator in zip(probs, generators)]
    return torch.cat(draws).to(logits.device)



def greedy_continuations(loaded: LoadedModel, prompts: list[list[int]], new_tokens: int, batch_size: int = 8) -> list[list[int]]:
    """Each token-id prompt's greedy continuation of up to `new_tokens` tokens, cut after the first
    end-of-sequence token, which is kept so a model trained on them (self-data healing) learns to stop."""
    if new_tokens < 1:
        raise ExplorerError(f"Generate at least one token (got {new_tokens}).")
    return [g.token_ids for g in generate_ids(loaded, prompts, Decoding(max_new_tokens=new_tokens), batch_size)]

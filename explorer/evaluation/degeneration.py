"""Degeneration diagnostics: what a pruned model writes when left to continue ordinary text.

Accuracy on short answers misses the way a damaged model fails at length: it loops ("the the the",
one sentence over and over) or drifts into text its unpruned self finds improbable. These numbers
measure that on free continuations of held-out documents (never used for calibration or healing),
each cut to its first `prompt_tokens` tokens and continued greedily for `new_tokens` tokens:

- distinct-n (Li et al. 2016, arXiv 1510.03055): distinct token n-grams / all token n-grams of a
  continuation, averaged over continuations; 1 when nothing repeats;
- 4-gram repetition rate (seq-rep-4 of Welleck et al. 2019, arXiv 1908.04319): the share of a
  continuation's token 4-grams that repeat one earlier in it (1 - distinct-4), averaged; 0 for
  fresh text, near 1 for a loop;
- the mean log-probability per token of the model's own continuation under a reference model (the
  unpruned one): how plausible the unpruned model finds what the pruned one wrote. A looping
  continuation can score high (loops are predictable), so read it beside the repetition rate.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from explorer.core.errors import ExplorerError
from explorer.core.options import setting
from explorer.lm.data import check_settings, make_samples
from explorer.lm.forward import inference
from explorer.lm.generate import Decoding, Generation, generate_ids
from explorer.lm.models import LanguageModel, LoadedModel


@dataclass(frozen=True)
class DegenerationSettings:
    """Which continuations the diagnostics read."""

    source: str = setting("embedded", "held-out text to continue: 'embedded', 'c4' or a .txt/.jsonl/.parquet file",
                          flag="--text-file")
    samples: int = setting(16, "held-out documents continued")
    prompt_tokens: int = setting(32, "tokens of each document given as the prompt")
    new_tokens: int = setting(64, "tokens generated after each prompt (greedy)")
    batch_size: int = setting(8, "continuations decoded together")

    def check(self) -> None:
        check_settings(self.samples, max(self.prompt_tokens, 2), self.batch_size)
        if self.prompt_tokens < 1 or self.new_tokens < 4:
            raise ExplorerError("Continuations need a prompt of at least 1 token and at least 4 new tokens (one 4-gram).")


def ngrams(tokens: list[int], n: int) -> list[tuple[int, ...]]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(tokens: list[int], n: int) -> float | None:
    """Distinct n-grams / n-grams of one continuation; None when it is shorter than n tokens."""
    grams = ngrams(tokens, n)
    return len(set(grams)) / len(grams) if grams else None


def repetition_rate(tokens: list[int], n: int = 4) -> float | None:
    """The share of n-grams that repeat an earlier one (Welleck et al.'s seq-rep-n); None when too short."""
    distinct = distinct_n(tokens, n)
    return None if distinct is None else 1 - distinct


def _mean(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


def held_out_prompts(loaded: LanguageModel, settings: DegenerationSettings) -> list[list[int]]:
    """The first `prompt_tokens` tokens of `samples` held-out documents."""
    return make_samples(loaded.tokenizer, settings.source, settings.samples, max(settings.prompt_tokens, 2),
                        split="heldout").ids


def reference_logprob(reference: LanguageModel, prompts: list[list[int]], continuations: list[list[int]],
                      batch_size: int = 8) -> float | None:
    """Mean log-probability per token of each continuation after its prompt under `reference`
    (in memory or streamed); None when nothing was generated."""
    scored = [(prompt, cont) for prompt, cont in zip(prompts, continuations) if cont]
    if not scored:
        return None
    groups = [(prompt, [i]) for i, (prompt, _) in enumerate(scored)]
    total, count = 0.0, 0
    with inference(reference.model):
        for i, logprobs in reference.score_groups(groups, [cont[:-1] for _, cont in scored], batch_size):
            target = torch.tensor(scored[i][1], device=logprobs.device)
            total += logprobs.gather(1, target[:, None]).sum().item()
            count += len(target)
    return total / count


def continuations(loaded: LoadedModel, settings: DegenerationSettings) -> tuple[list[list[int]], list[Generation]]:
    """(the prompts, their greedy continuations)."""
    settings.check()
    prompts = held_out_prompts(loaded, settings)
    return prompts, generate_ids(loaded, prompts, Decoding(max_new_tokens=settings.new_tokens), settings.batch_size)


def degeneration(loaded: LoadedModel, settings: DegenerationSettings = DegenerationSettings(),
                 reference: LanguageModel | None = None) -> dict:
    """distinct-1, distinct-2, the 4-gram repetition rate and (given a reference) the reference's
    mean log-probability of the continuations, with the settings and each continuation's text."""
    prompts, generated = continuations(loaded, settings)
    tokens = [g.token_ids for g in generated]
    return {
        "distinct_1": _mean([distinct_n(t, 1) for t in tokens]),
        "distinct_2": _mean([distinct_n(t, 2) for t in tokens]),
        "repetition_4": _mean([repetition_rate(t, 4) for t in tokens]),
        "reference_logprob": reference_logprob(reference, prompts, tokens, settings.batch_size) if reference else None,
        "new_tokens": sum(map(len, tokens)) / len(tokens),
        "settings": asdict(settings),
        "continuations": [g.text for g in generated],
    }

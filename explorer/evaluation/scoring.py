"""Log-likelihood scoring shared by every task: continuation log-probs and next-token log-probs.

Tokenization follows lm-evaluation-harness's HFLM exactly (`TemplateLM._encode_pair` and
`HFLM.tok_encode`, lm-eval 0.4.x), so our per-question predictions agree with lm-eval's:

- trailing whitespace of a context moves to the start of its continuation;
- whole = encode(context + continuation), context_enc = encode(context) and
  continuation_enc = whole[len(context_enc):], so a token that merges across the boundary
  is scored the way lm-eval scores it;
- `encode` uses the tokenizer's default special tokens (a causal model gets its BOS when its
  tokenizer adds one), except for a string that already starts with the prefix token;
- an empty context is replaced by the prefix token (BOS, else EOS);
- over-long inputs are truncated from the left to the model's context length.

Requests are grouped by their prefix (the tokens before the first scored position) and handed to
the model's `score_groups` (explorer.lm.forward: each distinct prefix runs once, a shared few-shot
header once for all, the LM head only where scoring reads).
"""

from __future__ import annotations

import torch

from explorer.core.errors import ExplorerError
from explorer.lm.forward import inference, prefix_token_id
from explorer.lm.models import LanguageModel

DEFAULT_MAX_LENGTH = 2048  # lm-eval's fallback when neither config nor tokenizer gives one


def encode(tokenizer, text: str) -> list[int]:
    """lm-eval's `tok_encode` for causal models: default special tokens, unless the text
    already starts with the prefix token (so it is never doubled)."""
    starts_with_prefix = text.startswith(tokenizer.decode(prefix_token_id(tokenizer)))
    return tokenizer.encode(text, add_special_tokens=not starts_with_prefix)


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's split of a (context, continuation) request into token ids."""
    if not context:
        cont = tokenizer.encode(continuation, add_special_tokens=False)
        prefix = prefix_token_id(tokenizer)
        return ([prefix], cont) if cont[:1] != [prefix] else (cont[:1], cont[1:])
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = encode(tokenizer, context + continuation)
    context_enc = encode(tokenizer, context)
    return context_enc, whole[len(context_enc):]


def max_length(loaded: LanguageModel) -> int:
    """The model's context length, looked up the way lm-eval's `resolve_max_length` does."""
    config = loaded.model.config
    config = getattr(config, "text_config", None) or config
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        if getattr(config, attr, None):
            return int(getattr(config, attr))
    tokenizer_max = getattr(loaded.tokenizer, "model_max_length", None)
    if tokenizer_max and tokenizer_max < 1e9:  # transformers' "unset" is a huge integer
        return int(tokenizer_max)
    return DEFAULT_MAX_LENGTH


def _group_by_prefix(prefixes: list[list[int]]) -> list[tuple[list[int], list[int]]]:
    """(prefix, indices of the requests that start with it), in first-seen order."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, prefix in enumerate(prefixes):
        groups.setdefault(tuple(prefix), []).append(i)
    return [(list(prefix), members) for prefix, members in groups.items()]


def loglikelihoods(
    loaded: LanguageModel, requests: list[tuple[str, str]], batch_size: int = 8
) -> list[tuple[float, int, bool]]:
    """For each (context, continuation): the summed log-prob of the continuation tokens, their
    number, and whether greedy decoding from the context produces exactly those tokens.

    Requests with the same context (a question's answer choices) share one pass over it."""
    limit = max_length(loaded)
    prefixes, tails, conts = [], [], []
    for context, continuation in requests:
        context_enc, cont = encode_pair(loaded.tokenizer, context, continuation)
        if not cont:
            raise ExplorerError(f"The continuation {continuation!r} adds no tokens to its context.")
        if len(cont) > limit:
            raise ExplorerError(f"A continuation of {len(cont)} tokens exceeds the model's context of {limit}.")
        row = (context_enc + cont)[-(limit + 1):][:-1]  # what lm-eval feeds the model
        split = len(row) - len(cont) + 1  # row[split - 1] predicts the first continuation token
        prefixes.append(row[:split])
        tails.append(row[split:])
        conts.append(cont)
    results: list[tuple[float, int, bool]] = [(0.0, 0, False)] * len(requests)
    with inference(loaded.model):
        for i, lp in loaded.score_groups(_group_by_prefix(prefixes), tails, batch_size):
            target = torch.tensor(conts[i], device=lp.device)
            total = lp.gather(1, target[:, None]).sum().item()
            results[i] = (total, len(conts[i]), bool((lp.argmax(dim=-1) == target).all()))
    return results


def candidate_ids(tokenizer, candidates: list[str]) -> list[int]:
    """Token ids of single-token candidates such as " A"; anything else is an error, since
    the next-token shortcut would silently score only its first token."""
    ids = []
    for text in candidates:
        tokens = tokenizer.encode(text, add_special_tokens=False)
        if len(tokens) != 1:
            raise ExplorerError(f"Answer candidate {text!r} is {len(tokens)} tokens for this tokenizer, not one.")
        ids.append(tokens[0])
    return ids


def next_token_logprobs(
    loaded: LanguageModel, prompts: list[str], candidates: list[str], batch_size: int = 8
) -> torch.Tensor:
    """[N, K] log-probs of each single-token candidate as the next token after each prompt.

    Equals lm-eval's loglikelihood of (prompt, candidate) whenever the candidate does not merge
    with the prompt's last token (true for "...Answer:" + " A"), at one forward per prompt
    instead of one per (prompt, candidate)."""
    ids = torch.tensor(candidate_ids(loaded.tokenizer, candidates))
    limit = max_length(loaded)
    prefix = prefix_token_id(loaded.tokenizer)
    inputs = [(encode(loaded.tokenizer, p) if p else [prefix])[-limit:] for p in prompts]
    out = torch.empty(len(prompts), len(candidates))
    with inference(loaded.model):
        for i, lp in loaded.score_groups(_group_by_prefix(inputs), [[] for _ in inputs], batch_size):
            out[i] = lp[0, ids.to(lp.device)].cpu()
    return out


def cloze_picks(choices: list[str], logprobs: list[float]) -> tuple[int, int]:
    """(length-normalized pick, raw pick) among answer texts scored by `loglikelihoods`.

    The normalized pick is lm-eval's acc_norm: log-likelihood divided by the answer's length in
    characters (`len(choice)`), which stops short answers winning just for being short. Ties go
    to the first choice, as with numpy's argmax in lm-eval."""
    normalized = [lp / max(len(choice), 1) for lp, choice in zip(logprobs, choices)]
    return max(range(len(choices)), key=normalized.__getitem__), max(range(len(choices)), key=logprobs.__getitem__)

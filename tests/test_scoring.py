"""Batched scoring against independent computations: one unbatched forward per request, with the
tokens split by lm-evaluation-harness itself (HFLM._encode_pair on the same in-memory model)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import pytest
import torch

from explorer.core.errors import ExplorerError
from explorer.evaluation.scoring import candidate_ids, encode_pair, loglikelihoods, next_token_logprobs
from explorer.lm.data import split_documents
from explorer.lm.forward import _shared_clusters
from explorer.lm.models import LoadedModel
from tests.families import tiny_family_model


@pytest.fixture(scope="module")
def hflm(embedded):
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=embedded.model, tokenizer=embedded.tokenizer, batch_size=1)


@pytest.fixture(scope="module")
def documents() -> list[str]:
    docs = split_documents("embedded", "heldout")
    return [next(docs) for _ in range(4)]


def _forward_logprobs(loaded, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return torch.log_softmax(loaded.model(torch.tensor([ids])).logits[0].float(), dim=-1)


def _greedy_continuation(loaded, text: str) -> str:
    """The model's own most likely next token after `text`, as a string."""
    token = int(_forward_logprobs(loaded, loaded.tokenizer.encode(text))[-1].argmax())
    return loaded.tokenizer.decode([token])


@pytest.fixture(scope="module")
def requests(embedded, documents) -> list[tuple[str, str]]:
    """Real news prose cut into (context, continuation) of different lengths, including a context
    with a trailing space, an empty context and the model's own greedy continuation."""
    pairs = []
    for k, doc in enumerate(documents):
        words = doc.split()
        pairs.append((" ".join(words[: 6 + 5 * k]), " " + " ".join(words[6 + 5 * k : 8 + 7 * k])))
    words = documents[0].split()
    pairs.append((" ".join(words[:10]) + " ", words[10]))
    pairs.append(("", " ".join(words[:5])))
    context = " ".join(documents[1].split()[:8])
    pairs.append((context, _greedy_continuation(embedded, context)))
    return pairs


def _reference(loaded, hflm, context: str, continuation: str) -> tuple[float, int, bool]:
    """Plain loop: lm-eval's token split, one forward on context + continuation, gather."""
    if context:
        ctx, cont = hflm._encode_pair(context, continuation)
    else:
        ctx, cont = [hflm.prefix_token_id], loaded.tokenizer.encode(continuation, add_special_tokens=False)
    logprobs = _forward_logprobs(loaded, ctx + cont)[len(ctx) - 1 : -1]
    target = torch.tensor(cont)
    return logprobs.gather(1, target[:, None]).sum().item(), len(cont), bool((logprobs.argmax(-1) == target).all())


def test_token_split_matches_lm_eval(embedded, hflm, requests):
    for context, continuation in requests:
        if context:
            assert encode_pair(embedded.tokenizer, context, continuation) == hflm._encode_pair(context, continuation)
    prefixed = embedded.tokenizer.bos_token + "Answer:"  # text that already starts with the prefix token
    assert encode_pair(embedded.tokenizer, prefixed, " A") == hflm._encode_pair(prefixed, " A")


def test_loglikelihoods_match_unbatched_reference(embedded, hflm, requests):
    """Batches of 3 mix lengths, so right padding is exercised against unpadded single forwards."""
    ours = loglikelihoods(embedded, requests, batch_size=3)
    for (context, continuation), (logprob, count, greedy) in zip(requests, ours):
        ref_logprob, ref_count, ref_greedy = _reference(embedded, hflm, context, continuation)
        assert count == ref_count
        assert logprob == pytest.approx(ref_logprob, abs=1e-3)
        assert greedy == ref_greedy
    assert ours[-1][2], "the model's own greedy token must count as greedy"
    assert not all(greedy for _, _, greedy in ours)
    assert len({count for _, count, _ in ours}) > 2


def test_next_token_logprobs_match_reference(embedded, documents):
    prompts = [" ".join(doc.split()[: 4 + 5 * k]) for k, doc in enumerate(documents[:3])]
    candidates = [" A", " B", " the", "."]
    ours = next_token_logprobs(embedded, prompts, candidates, batch_size=3)
    ids = [embedded.tokenizer.encode(c, add_special_tokens=False)[0] for c in candidates]
    for row, prompt in zip(ours, prompts):
        reference = _forward_logprobs(embedded, embedded.tokenizer.encode(prompt))[-1, ids]
        assert torch.allclose(row, reference, atol=1e-3)
    # the shortcut equals the continuation log-likelihood of each single-token candidate
    full = torch.tensor([lp for lp, _, _ in loglikelihoods(embedded, [(prompts[0], c) for c in candidates])])
    assert torch.allclose(ours[0], full, atol=1e-3)


def test_scoring_restores_training_mode(embedded, documents):
    embedded.model.train()
    try:
        next_token_logprobs(embedded, [documents[0][:40]], [" A"])
        assert embedded.model.training
    finally:
        embedded.model.eval()


def test_multi_token_candidate_is_rejected(embedded):
    with pytest.raises(ExplorerError, match="not one"):
        next_token_logprobs(embedded, ["Answer:"], [" A", " Antananarivo"])


def _choice_requests(documents: list[str]) -> list[tuple[str, str]]:
    """Questions of different lengths, each with answers of 1 to 6 tokens sharing its context
    (the cloze layout), interleaved so a batch mixes contexts."""
    contexts = [" ".join(doc.split()[: 30 + 9 * k]) for k, doc in enumerate(documents[:3])]
    answers = [" Paris", " the United Nations", " 42", " a long and winding answer of many words"]
    return [(context, answer) for answer in answers for context in contexts]


@contextmanager
def _positions_counted(model: torch.nn.Module) -> Iterator[list[int]]:
    """[number of token positions (padding included) the model's embedding layer processes inside the block]."""
    count = [0]
    hook = model.get_input_embeddings().register_forward_hook(lambda module, args, out: count.__setitem__(0, count[0] + args[0].numel()))
    try:
        yield count
    finally:
        hook.remove()


def test_shared_contexts_match_reference_and_run_once(embedded, hflm, documents):
    """Answers sharing a context agree with one unbatched forward per answer, while each context
    runs once: the processed positions are the padded contexts plus the padded answer tails,
    far fewer than one full row per answer."""
    requests = _choice_requests(documents)
    with _positions_counted(embedded.model) as count:
        ours = loglikelihoods(embedded, requests, batch_size=8)
    for (context, continuation), (logprob, n_tokens, greedy) in zip(requests, ours):
        ref_logprob, ref_count, ref_greedy = _reference(embedded, hflm, context, continuation)
        assert (n_tokens, greedy) == (ref_count, ref_greedy)
        assert logprob == pytest.approx(ref_logprob, abs=1e-3)
    full_rows = sum(len(ctx) + len(cont) for ctx, cont in (encode_pair(embedded.tokenizer, *r) for r in requests))
    assert count[0] < full_rows / 2


@pytest.mark.parametrize("family", ["llama", "gemma2", "gpt2", "opt", "gpt_neox", "phi"])
def test_shared_contexts_across_families(family, embedded, documents):
    """Padded prefixes + cached tails against one plain forward per request, on families whose
    caches and position handling differ (gemma2's sliding-window cache batches equal lengths only)."""
    model = tiny_family_model(family, len(embedded.tokenizer))
    loaded = LoadedModel(model, embedded.tokenizer, family, f"test:{family}")
    requests = _choice_requests(documents)
    ours = loglikelihoods(loaded, requests, batch_size=8)
    for (context, continuation), (logprob, _, _) in zip(requests, ours):
        ctx, cont = encode_pair(embedded.tokenizer, context, continuation)
        reference = _forward_logprobs(loaded, ctx + cont)[len(ctx) - 1 : -1].gather(1, torch.tensor(cont)[:, None]).sum()
        assert logprob == pytest.approx(reference.item(), abs=1e-4)


def _few_shot_requests(documents: list[str]) -> list[tuple[str, str]]:
    """Two few-shot headers (long shared token prefixes), each followed by questions of 0 to 14
    words (the bare header is a prefix of its questions), answers of several token lengths."""
    requests = []
    for header_doc, words_doc in ((documents[3], documents[1]), (documents[2], documents[0])):
        header = " ".join(header_doc.split()[:60])
        words = words_doc.split()
        contexts = [header] + [f"{header}\n\nQuestion: {' '.join(words[k : 2 * k + 1])}\nAnswer:" for k in (1, 4, 7)]
        requests += [(context, answer) for context in contexts for answer in (" Paris", " the United Nations", " 42")]
    return requests


def _unshared_loglikelihood(loaded, context: str, continuation: str) -> float:
    ctx, cont = encode_pair(loaded.tokenizer, context, continuation)
    return _forward_logprobs(loaded, ctx + cont)[len(ctx) - 1 : -1].gather(1, torch.tensor(cont)[:, None]).sum().item()


def test_shared_few_shot_prefix_runs_once_and_matches_unshared(embedded, documents):
    """Batches of 2 over two headers: each header runs once as a KV cache (the embedding layer
    sees far fewer positions than the contexts hold), every batch reuses it unmutated, and the
    log-likelihoods and greedy flags equal one plain forward per request within 1e-4."""
    requests = _few_shot_requests(documents)
    with _positions_counted(embedded.model) as count:
        ours = loglikelihoods(embedded, requests, batch_size=2)
    for request, (logprob, _, _) in zip(requests, ours):
        assert logprob == pytest.approx(_unshared_loglikelihood(embedded, *request), abs=1e-4)
    contexts = {tuple(encode_pair(embedded.tokenizer, *r)[0]) for r in requests}
    assert count[0] < sum(len(c) for c in contexts) / 2
    prompts = sorted({context for context, _ in requests})
    shared = next_token_logprobs(embedded, prompts, [" A", " B"], batch_size=3)
    ids = candidate_ids(embedded.tokenizer, [" A", " B"])
    for prompt, row in zip(prompts, shared):
        reference = _forward_logprobs(embedded, embedded.tokenizer.encode(prompt))[-1, ids]
        assert torch.allclose(row, reference, atol=1e-4)


def test_shared_clusters_split_headers_and_keep_a_last_token():
    header_a, header_b = list(range(100, 140)), list(range(200, 230))
    prefixes = [header_a + [1, 2], header_b + [5], header_a, header_a + [3], [7, 8, 9], header_b + [6, 6]]
    clusters = sorted((sorted(m), n) for m, n in _shared_clusters(prefixes))
    assert clusters == [([0, 2, 3], 39), ([1, 5], 30), ([4], 0)]


@pytest.mark.parametrize("family", ["llama", "gemma2", "gpt2"])
def test_shared_few_shot_prefix_across_families(family, embedded, documents):
    """Llama and GPT-2 share the header's cache; gemma2's sliding-window cache cannot carry the
    padded batch, so it falls back to whole prefixes: both equal plain forwards within 1e-4."""
    loaded = LoadedModel(tiny_family_model(family, len(embedded.tokenizer)), embedded.tokenizer, family, f"test:{family}")
    requests = _few_shot_requests(documents)
    for request, (logprob, _, _) in zip(requests, loglikelihoods(loaded, requests, batch_size=4)):
        assert logprob == pytest.approx(_unshared_loglikelihood(loaded, *request), abs=1e-4)

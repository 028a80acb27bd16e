"""Degeneration diagnostics (explorer.evaluation.degeneration): n-gram measures against hand counts,
and the reference log-probability against a full forward written here."""

from __future__ import annotations

import pytest
import torch

from explorer.core.errors import ExplorerError
from explorer.evaluation.degeneration import (
    DegenerationSettings,
    continuations,
    degeneration,
    distinct_n,
    held_out_prompts,
    reference_logprob,
    repetition_rate,
)


def test_ngram_measures_by_hand():
    loop = [1, 2, 3, 4, 1, 2, 3, 4]  # 4-grams 1234 2341 3412 4123 1234: five, one repeated
    assert distinct_n(loop, 4) == pytest.approx(4 / 5)
    assert repetition_rate(loop) == pytest.approx(1 / 5)
    assert distinct_n(loop, 1) == pytest.approx(4 / 8)
    assert distinct_n([7, 7, 7, 7], 1) == pytest.approx(1 / 4)
    assert repetition_rate([7] * 10) == pytest.approx(6 / 7)  # seven 4-grams, all the same
    assert repetition_rate(list(range(10))) == 0
    assert distinct_n([1, 2, 3], 4) is None and repetition_rate([1, 2, 3]) is None


def _by_hand(loaded, prompt: list[int], continuation: list[int]) -> list[float]:
    with torch.no_grad():
        logits = loaded.model(input_ids=torch.tensor([prompt + continuation])).logits[0].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    return [logprobs[len(prompt) - 1 + j, token].item() for j, token in enumerate(continuation)]


def test_reference_logprob_equals_a_full_forward(tiny_llama):
    settings = DegenerationSettings(samples=3, prompt_tokens=12, new_tokens=6, batch_size=2)
    prompts, generated = continuations(tiny_llama, settings)
    assert [len(p) for p in prompts] == [12, 12, 12]
    tokens = [g.token_ids for g in generated]
    values = [v for p, t in zip(prompts, tokens) for v in _by_hand(tiny_llama, p, t)]
    assert reference_logprob(tiny_llama, prompts, tokens, batch_size=2) == pytest.approx(sum(values) / len(values), abs=1e-4)
    assert reference_logprob(tiny_llama, prompts, [[] for _ in prompts]) is None


def test_degeneration_of_a_pruned_model(embedded):
    """The unpruned model finds its own greedy text likelier than what the model without a third of
    its layers writes; every continuation is reported with its measures."""
    settings = DegenerationSettings(samples=4, prompt_tokens=24, new_tokens=24, batch_size=4)
    own = degeneration(embedded, settings, reference=embedded)
    pruned = degeneration(embedded.pruned(10, 10), settings, reference=embedded)
    assert own["reference_logprob"] > pruned["reference_logprob"]
    for result in (own, pruned):
        assert len(result["continuations"]) == 4 and result["new_tokens"] > 0
        assert 0 <= result["repetition_4"] <= 1 and 0 < result["distinct_1"] <= 1
    assert own["continuations"] != pruned["continuations"]
    assert len(held_out_prompts(embedded, settings)) == 4


def test_bad_settings(tiny_llama):
    with pytest.raises(ExplorerError, match="4 new tokens"):
        degeneration(tiny_llama, DegenerationSettings(new_tokens=3))
    with pytest.raises(ExplorerError, match="at least 1"):
        degeneration(tiny_llama, DegenerationSettings(samples=0))

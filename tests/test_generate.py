"""The decoding engine (explorer.lm.generate) against an independent decode loop written here:
no KV cache, no padding, no batching, one full forward per new token and its argmax."""

from __future__ import annotations

import pytest
import torch

from explorer.core.errors import ExplorerError
from explorer.lm.generate import Decoding, complete, cut_at_stops, eos_ids, generate

HEADER = ("Question: What is the capital of Germany?\nAnswer: Berlin\n\n"
          "Question: What is the capital of Italy?\nAnswer: Rome\n\n")
PROMPTS = [HEADER + f"Question: What is the capital of {country}?\nAnswer:"
           for country in ("France", "Spain", "the United Kingdom", "Japan", "Peru", "New Zealand")]
PROMPTS += ["Once upon a time", "The", "In 1989 the wall", HEADER + "Question: Which"]


def uncached(loaded, prompt: str, max_new_tokens: int, until: tuple[str, ...] = ()) -> tuple[list[int], str]:
    """Greedy decoding by hand: the whole sequence through the model at every step, argmax of the last
    logits, stop at an end-of-sequence token or once the decoded continuation holds a stop string."""
    tokenizer = loaded.tokenizer
    ids = tokenizer(prompt)["input_ids"]
    new: list[int] = []
    stops = (*until, tokenizer.eos_token)
    with torch.no_grad():
        for _ in range(max_new_tokens):
            logits = loaded.model(input_ids=torch.tensor([ids + new]), use_cache=False).logits[0, -1]
            new.append(int(logits.float().argmax()))
            text = tokenizer.decode(new, skip_special_tokens=True)
            if new[-1] in eos_ids(loaded) or any(stop in text for stop in until):
                break
    text = tokenizer.decode(new, skip_special_tokens=True)
    for stop in stops:
        text = text.split(stop)[0]
    return new, text


@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_batched_cached_decode_equals_uncached_loop(tiny_llama, batch_size):
    """Random weights: the header shared by most prompts runs as one cache, rows of other lengths are
    padded, finished rows leave the batch; every token equals the uncached loop's."""
    ours = generate(tiny_llama, PROMPTS, Decoding(max_new_tokens=10), batch_size=batch_size)
    for prompt, generation in zip(PROMPTS, ours):
        ids, text = uncached(tiny_llama, prompt, 10)
        assert generation.token_ids == ids
        assert generation.text == text
        assert generation.finish in ("eos", "length")


def test_embedded_stops_like_the_uncached_loop(embedded):
    """The real model with stop strings: the quiz answers stop at the newline, free text runs to the limit."""
    decoding = Decoding(max_new_tokens=12, until=("\n",))
    prompts = PROMPTS[:4] + PROMPTS[6:8]
    ours = generate(embedded, prompts, decoding, batch_size=2)  # answers of different lengths: rows leave early
    for prompt, generation in zip(prompts, ours):
        ids, text = uncached(embedded, prompt, 12, ("\n",))
        assert (generation.token_ids, generation.text) == (ids, text)
    assert [g.text for g in ours[:3]] == [" Paris", " Madrid", " London"]
    assert ours[0].finish == "stop" and ours[4].finish == "length" and len(ours[4].token_ids) == 12


def test_sampling_is_seeded_per_prompt(tiny_llama):
    """A sample depends on the seed and the prompt's place, not on the batch it ran in; a nucleus so
    small that it holds one token is greedy decoding."""
    sampled = Decoding(max_new_tokens=8, temperature=1.0, seed=3)
    first = generate(tiny_llama, PROMPTS, sampled, batch_size=4)
    assert [g.token_ids for g in generate(tiny_llama, PROMPTS, sampled, batch_size=1)] == [g.token_ids for g in first]
    other = generate(tiny_llama, PROMPTS, Decoding(max_new_tokens=8, temperature=1.0, seed=4), batch_size=4)
    assert [g.token_ids for g in other] != [g.token_ids for g in first]
    greedy = generate(tiny_llama, PROMPTS, Decoding(max_new_tokens=8), batch_size=4)
    assert [g.token_ids for g in first] != [g.token_ids for g in greedy]  # random weights: sampling wanders
    nucleus = generate(tiny_llama, PROMPTS, Decoding(max_new_tokens=8, temperature=1.0, top_p=1e-6), batch_size=4)
    assert [g.token_ids for g in nucleus] == [g.token_ids for g in greedy]


def test_cut_at_stops_is_lm_evals_cut():
    assert cut_at_stops(" Paris\n\nQuestion: x", ("\n",)) == " Paris"
    assert cut_at_stops("a Question: b\nc", ("\n", "Question:")) == "a "  # the earliest of all stops
    assert cut_at_stops("no stop here", ("\n", "")) == "no stop here"  # an empty stop is ignored
    assert cut_at_stops("", ("\n",)) == ""


def test_complete_and_bad_input(embedded, tiny_llama):
    assert complete(embedded, "The capital of France is", 6) == generate(embedded, ["The capital of France is"],
                                                                         Decoding(max_new_tokens=6))[0].text
    with pytest.raises(ExplorerError, match="Give a prompt"):
        complete(tiny_llama, "  ")
    with pytest.raises(ExplorerError, match="empty prompt"):
        generate(tiny_llama, [""])
    with pytest.raises(ExplorerError, match="max_new_tokens"):
        generate(tiny_llama, ["a"], Decoding(max_new_tokens=0))
    with pytest.raises(ExplorerError, match="top_p"):
        generate(tiny_llama, ["a"], Decoding(top_p=0))
    with pytest.raises(ExplorerError, match="positions"):
        generate(tiny_llama, ["a"], Decoding(max_new_tokens=10_000))
    assert generate(tiny_llama, []) == []


def test_streamed_model_is_refused(embedded):
    from explorer.lm.stream import open_streamed

    with pytest.raises(ExplorerError, match="in memory"):
        generate(open_streamed("embedded", device="cpu"), ["The capital of France is"])


def _recording_hflm():
    """lm-eval's HFLM, recording the tokens its `generate` returns for each context (the context's
    real tokens, padding dropped -> the tokens after it, as long as its batch ran)."""
    from lm_eval.models.huggingface import HFLM

    class Recording(HFLM):
        generated: dict[tuple[int, ...], list[int]] = {}

        def _model_generate(self, context, max_length, stop, **kwargs):
            out = super()._model_generate(context, max_length, stop, **kwargs)
            for row, mask, tokens in zip(context.tolist(), kwargs["attention_mask"].tolist(), out.tolist()):
                Recording.generated[tuple(t for t, real in zip(row, mask) if real)] = tokens[len(row):]
            return out

    return Recording


@pytest.mark.parametrize(("name", "options", "limit"), [
    ("quiz-capitals-gen", {}, 24), ("arith-cot", {}, 6), ("mmlu-gen", {"shots": 1}, 8)])
def test_outputs_equal_lm_eval_generate_until(embedded, mmlu_dir, tmp_path, name, options, limit):
    """lm-eval's HFLM on the same in-memory model, greedy, from the same prompts: our text equals
    lm-eval's and our tokens equal the first tokens it generated (its batch may run on past a stop)."""
    from explorer.evaluation.evaluate import run_task
    from explorer.evaluation.lmeval import run_lmeval
    from explorer.evaluation.tasks import get_task

    if name == "mmlu-gen":
        options = {**options, "mmlu_dir": mmlu_dir, "subjects": ["high_school_geography"]}
    task = get_task(name, **options)
    lmeval_task = task.write_lmeval_task(limit, folder=tmp_path)
    recording = _recording_hflm()
    theirs = run_lmeval(embedded, [lmeval_task], limit=limit, include_path=tmp_path, lm_class=recording)
    ours = run_task(embedded, task, limit=limit).per_question
    generated = generate(embedded, [q.prompt for q in task.selected(limit)], task.decoding)
    samples, predictions = theirs["samples"][lmeval_task], theirs["predictions"][lmeval_task]
    assert len(samples) == len(ours) == len(generated) == limit
    for sample, prediction, result, question, generation in zip(samples, predictions, ours, task.selected(limit), generated):
        assert sample["arguments"][0][0] == question.prompt
        their_tokens = recording.generated[tuple(embedded.tokenizer(question.prompt)["input_ids"])]
        assert generation.token_ids == their_tokens[:len(generation.token_ids)]
        assert generation.text == prediction["output"] == result.output
    if name == "quiz-capitals-gen":
        assert sum(r.correct for r in ours) > 0  # the embedded model knows some capitals

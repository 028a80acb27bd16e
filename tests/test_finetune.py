"""Prompt-based finetuning of cut models (Yuan, Nie, Ma & Färber, 2402.11700): the loss against an independent
label-word cross-entropy, zero-step agreement with the in-context scorer, real learning on real
sentences, the train/test rule, the whole classify path (CLI and job) on tiny GPT-2 and OPT, and
one sentence for each kind of bad input."""

from __future__ import annotations

import json
import time

import pytest
import torch

from explorer import cli, jobs
from explorer.analysis.strategies import Context, choose_layers
from explorer.core.errors import ExplorerError
from explorer.evaluation.tasks import get_task
from explorer.experiments.classify import ClassifySettings, run_classify
from explorer.lm.layers import pruned_view
from explorer.lm.models import LoadedModel
from explorer.surgery.finetune import FinetuneConfig, build_classifier, encode_task, measure, train
from tests.families import tiny_family_model
from tests.screen import seen
from tests.test_classification import pang_lee_rows

FAMILIES = ("gpt2", "opt")


@pytest.fixture()
def polarity(tmp_path):
    path = tmp_path / "polarity.jsonl"
    path.write_text("".join(json.dumps({"text": t, "label": label}) + "\n" for t, label in pang_lee_rows(40)))
    return path


@pytest.fixture(scope="module")
def tiny_models(embedded):
    return {family: LoadedModel(tiny_family_model(family, len(embedded.tokenizer)), embedded.tokenizer, f"tiny {family}", family)
            for family in FAMILIES}


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory, tiny_models):
    """The tiny models saved as folders, for the CLI and the job (which load by path)."""
    folders = {}
    for family, loaded in tiny_models.items():
        folder = tmp_path_factory.mktemp(f"tiny-{family}")
        loaded.model.save_pretrained(folder)
        loaded.tokenizer.save_pretrained(folder)
        folders[family] = folder
    return folders


@torch.no_grad()
def _word_logprob(model, tokenizer, context: str, word: str) -> float:
    """Sum of the word's token log-probs from one forward of context + word (no shared code)."""
    context_ids = tokenizer(context).input_ids
    whole = tokenizer(context + word).input_ids
    assert whole[: len(context_ids)] == context_ids
    logprobs = torch.log_softmax(model(torch.tensor([whole])).logits[0].float(), dim=-1)
    return sum(logprobs[t - 1, whole[t]].item() for t in range(len(context_ids), len(whole)))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("words", ["terrible,great", "bad movie,good movie"])  # the second: two tokens each, summed
def test_loss_equals_independent_label_word_cross_entropy(tiny_models, polarity, family, words):
    loaded = tiny_models[family]
    task = get_task("sst2", data_file=str(polarity), train=8, label_words=words)
    examples = task.train_examples[:3]
    classifier = build_classifier(loaded, "prompt-ft", FinetuneConfig(steps=0), 2)
    loss = classifier.loss(encode_task(loaded, task, examples)).item()
    expected = []
    for e in examples:
        scores = torch.tensor([_word_logprob(loaded.model, loaded.tokenizer, task.context(e), f" {w}") for w in task.words])
        expected.append(-torch.log_softmax(scores, dim=0)[e.label].item())
    assert loss == pytest.approx(sum(expected) / len(expected), abs=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_head_reads_the_final_normed_state_of_the_prompts_last_token(tiny_models, polarity, family):
    loaded = tiny_models[family]
    task = get_task("sst2", data_file=str(polarity), train=4)
    classifier = build_classifier(loaded, "head-ft", FinetuneConfig(weights="none"), 2)
    tokens = [17, 4242]  # a head made of two LM-head rows must give those tokens' next-token logits
    with torch.no_grad():
        classifier.head.weight.copy_(loaded.model.get_output_embeddings().weight[tokens])
    items = encode_task(loaded, task, task.examples[:3])
    with torch.no_grad():
        got = classifier.logits(items)
        expected = [loaded.model(torch.tensor([loaded.tokenizer(task.context(e)).input_ids])).logits[0, -1, tokens]
                    for e in task.examples[:3]]
    assert torch.allclose(got, torch.stack(expected), atol=1e-4)


def test_zero_steps_prompt_ft_predicts_like_the_in_context_scorer(embedded, tiny_models, polarity):
    task = get_task("sst2", data_file=str(polarity), train=8, shots=1)
    for loaded in (embedded, *tiny_models.values()):  # k = L: nothing cut
        icl = measure(loaded, task, "icl", FinetuneConfig(), 12, 4)
        tuned = measure(loaded, task, "prompt-ft", FinetuneConfig(steps=0), 12, 4)
        assert tuned["predictions"] == icl["predictions"] and len(icl["predictions"]) == 12


def test_a_few_steps_learn_a_real_split(embedded):
    """16 real Pang & Lee sentences, the embedded model cut to its first 4 layers: training lowers the
    loss and raises accuracy on the training split, for prompt-based LoRA and for the head."""
    task = get_task("sst2", data_file="embedded", train=16)
    pruned = pruned_view(embedded, choose_layers("top-cut", embedded.num_layers - 4, Context(embedded.num_layers)))
    items = encode_task(pruned, task, task.train_examples)
    for mode in ("prompt-ft", "head-ft"):
        config = FinetuneConfig(steps=16, batch_size=8, lr=1e-2, head_lr=3e-2)
        classifier = build_classifier(pruned, mode, config, 2)
        before, scores_before = classifier.evaluate(items)
        train(classifier, items, config)
        after, scores_after = classifier.evaluate(items)

        def accuracy(scores):
            return sum(max(range(2), key=row.__getitem__) == item.label for row, item in zip(scores, items)) / len(items)

        assert after < before * 0.7, mode
        assert accuracy(scores_after) > accuracy(scores_before) and accuracy(scores_after) >= 0.8, mode


def test_training_examples_are_never_scored_or_shown(polarity):
    for task in (get_task("sst2", data_file="embedded", train=80, shots=4), get_task("sst2", data_file=str(polarity), train=10, shots=2)):
        train_ids = {e.id for e in task.train_examples}
        test_ids = {e.id for e in task.examples}
        demo_ids = {e.id for e in task.demonstrations}
        assert train_ids and test_ids and demo_ids
        assert not train_ids & test_ids and not train_ids & demo_ids and not test_ids & demo_ids
    embedded_task = get_task("sst2", data_file="embedded", train=80)
    assert (len(embedded_task.train_examples), len(embedded_task.examples)) == (80, 100)
    assert sorted(e.label for e in embedded_task.train_examples) == [0] * 40 + [1] * 40


@pytest.mark.parametrize("family", FAMILIES)
def test_cli_writes_predictions_and_accuracy_for_every_k_and_mode(tiny_dirs, polarity, tmp_path, family):
    out = tmp_path / "classify.json"
    code = cli.main(["classify", "--model", str(tiny_dirs[family]), "--task", "sst2", "--data-file", str(polarity),
                     "--train", "8", "--strategy", "top-cut,similarity", "--keep", "1,3", "--mode", "icl,prompt-ft,head-ft",
                     "--steps", "2", "--limit", "6", "--out", str(out)])
    assert code == 0
    result = json.loads(out.read_text())
    assert {(p["strategy"], p["k"], p["mode"]) for p in result["points"]} == {
        (s, k, m) for s in ("top-cut", "similarity") for k in (1, 3) for m in ("icl", "prompt-ft", "head-ft")}
    for point in result["points"]:
        assert (point["n_train"], point["n_test"], len(point["predictions"])) == (8, 6, 6)
        correct = sum(p["pred"] == p["gold"] for p in point["predictions"])
        assert point["accuracy"] == pytest.approx(correct / 6)
        assert point["ci_low"] - 1e-9 <= point["accuracy"] <= point["ci_high"] + 1e-9
    cut = next(p for p in result["points"] if p["strategy"] == "similarity" and p["k"] == 1)
    assert cut["n"] == 2 and cut["start"] + cut["n"] < 3  # the similarity block keeps the final layer


def test_background_job_records_points(tiny_dirs, polarity, store):
    settings = ClassifySettings(model=str(tiny_dirs["opt"]), data_file=str(polarity), train=8, keep=(2,), modes=("head-ft",),
                                finetune={"steps": 1}, limit=4, device="cpu")
    run_id = jobs.submit(store, "classify", settings.model, settings.to_json())  # a real runner process
    deadline = time.time() + 300
    while store.get_run(run_id).status in jobs.ACTIVE and time.time() < deadline:
        time.sleep(0.5)
    run = store.get_run(run_id)
    assert run.status == "done", run.error
    assert [(p["k"], p["mode"], len(p["predictions"])) for p in run.result["points"]] == [(2, "head-ft", 4)]


def test_bad_input_gets_one_sentence(tiny_models, polarity, tmp_path, store, capsys):
    loaded = tiny_models["gpt2"]
    settings = ClassifySettings(data_file=str(polarity), train=8, keep=(4,), modes=("icl",))
    with pytest.raises(ExplorerError, match="k = 4 layers kept is out of range: this model has 3 layers, keep 1 to 3"):
        run_classify(loaded, settings, store, store.create_run("classify", "tiny", settings.to_json()))
    with pytest.raises(ExplorerError, match="no training examples for prompt-ft"):
        ClassifySettings(data_file=str(polarity), train=0, modes=("icl", "prompt-ft")).check()
    with pytest.raises(ExplorerError, match="too small to hold out 40 training examples: that needs at least 42 rows"):
        get_task("sst2", data_file=str(polarity), train=40)
    code = cli.main(["classify", "--data-file", str(polarity), "--train", "99", "--out", str(tmp_path / "x.json")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "needs at least 101 rows" in err


def test_label_word_missing_from_the_vocabulary(polarity):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "[PAD]": 1, "Review": 2, ":": 3, "Sentiment": 4, "great": 5}
    words = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=words, unk_token="[UNK]", pad_token="[PAD]", eos_token="[PAD]")
    loaded = LoadedModel(tiny_family_model("gpt2", len(vocab)), tokenizer, "word-level", "wl")
    task = get_task("sst2", data_file=str(polarity), train=4)
    with pytest.raises(ExplorerError, match="label word 'terrible' is not in the model's vocabulary"):
        measure(loaded, task, "prompt-ft", FinetuneConfig(steps=0), 2, 2)


def test_page_draws_a_finished_run_and_explains_bad_input(tiny_models, polarity):
    """The page reads the store only: a finished run draws its curve and table; a form asking to
    finetune with no training split shows one sentence instead of starting a job."""

    from explorer.state.store import Store

    store = Store()
    settings = ClassifySettings(model="embedded", data_file=str(polarity), train=8, keep=(1, 3), modes=("icl", "head-ft"),
                                finetune={"steps": 1}, limit=4)  # stored as the page's model's run: a fresh page opens on it
    run_id = store.create_run("classify", "embedded", settings.to_json())
    with store.running(run_id) as run:
        run.result = run_classify(tiny_models["gpt2"], settings, store, run_id)
    try:
        _page_checks(run_id)
    finally:  # later page tests open on the store's runs: leave none behind
        store.delete_run(run_id)


def _page_checks(run_id: int) -> None:
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file("../app.py", default_timeout=120)
    at.run()
    at.switch_page("pages/classify.py").run()
    assert not at.exception and not at.error
    assert len(at.get("plotly_chart")) == 1 and any("train 8, test 4" in seen(c.value) for c in at.caption)
    at.number_input(key="cl_train").set_value(0).run()
    assert [seen(e.value) for e in at.error] == [
        "sst2 has no training examples for prompt-ft/head-ft: hold some out (train N, e.g. 80) or use mode icl only."]

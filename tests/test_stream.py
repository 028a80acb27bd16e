"""Layer-streamed analysis against the in-memory model: distances, validation loss, task scores
and pruned (skipped-layer) results agree to 1e-5 on the embedded model's safetensors folder and
on tiny checkpoints of every family in tests/families.py, saved to disk and read back."""

from __future__ import annotations

import json
import shutil
import weakref

import pytest
import torch

from explorer.analysis.metrics import compute_scores
from explorer.analysis.similarity import compute_distances
from explorer.cli import main
from explorer.core.errors import ExplorerError
from explorer.evaluation.evaluate import run_task, validation_loss
from explorer.evaluation.scoring import loglikelihoods
from explorer.lm.data import EMBEDDED, make_samples
from explorer.lm.models import embedded_folder, embedded_gguf_path, load_model
from explorer.lm.stream import StreamedModel, fits_in_memory, open_for_analysis, open_streamed, unsupported_reason
from explorer.surgery.prune import prune_block
from explorer.views.forms.similarity import SOURCES
from tests.families import FAMILIES, tiny_family_model

TOL = 1e-5
# Sliding windows shorter than the samples, so per-layer attention types really differ.
SLIDING = {"gemma2": {"sliding_window": 4}, "gemma3_text": {"sliding_window": 4}}


def max_gap(a: list[list[float]], b: list[list[float]]) -> float:
    return max(abs(x - y) for row_a, row_b in zip(a, b) for x, y in zip(row_a, row_b))


def family_folder(family: str, tokenizer, root) -> str:
    """A tiny random `family` checkpoint saved as safetensors with the embedded tokenizer."""
    model = tiny_family_model(family, len(tokenizer))
    for key, value in SLIDING.get(family, {}).items():
        setattr(model.config, key, value)
    if family in SLIDING:
        model.config.layer_types = ["sliding_attention", "full_attention", "sliding_attention"]
    folder = root / family
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def embedded_streamed(embedded) -> StreamedModel:
    return open_streamed("embedded", device="cpu")


@pytest.fixture(scope="module")
def calibration(embedded) -> list[list[int]]:
    return make_samples(embedded.tokenizer, "embedded", 4, 32).ids


def test_embedded_distances_and_loss_equal_in_memory(embedded, embedded_streamed, calibration):
    """Equal to the in-memory pass, with at most one decoder layer holding real weights at any
    moment (a weak reference to each loaded layer) and the templates left on meta."""
    alive: list[weakref.ref] = []
    most = [0]
    load = embedded_streamed._layer

    def counted(index: int):
        # no gc.collect(): a used layer must be freed by reference counting, at once
        most[0] = max(most[0], 1 + sum(ref() is not None for ref in alive))
        layer = load(index)
        alive.append(weakref.ref(layer))
        return layer

    embedded_streamed._layer = counted
    try:
        ours = compute_distances(embedded_streamed, calibration, batch_size=4)
    finally:
        del embedded_streamed._layer
    assert len(alive) == 30 and most[0] == 1
    assert all(p.device.type == "meta" for p in embedded_streamed.templates.parameters())
    reference = compute_distances(embedded, calibration, batch_size=4)
    assert ours.num_layers == 30 and ours.samples == 4
    assert max_gap(ours.distances, reference.distances) < TOL
    assert validation_loss(embedded_streamed, samples=4, seq_len=32, batch_size=4) == pytest.approx(
        validation_loss(embedded, samples=4, seq_len=32, batch_size=4), abs=TOL
    )


def test_embedded_pruned_loss_and_quiz_equal_in_memory(embedded, embedded_streamed):
    """Skipping layers 20-24 while streaming = the pruned model in memory, for the loss and
    for a cloze task's per-question scores (log-likelihoods) and picks."""
    pruned = prune_block(embedded, 20, 5).loaded
    streamed = embedded_streamed.pruned(20, 5)
    assert streamed.skip == frozenset(range(20, 25)) and streamed.name == pruned.name
    assert validation_loss(streamed, samples=3, seq_len=32) == pytest.approx(validation_loss(pruned, samples=3, seq_len=32), abs=TOL)
    ours, reference = run_task(streamed, "quiz-capitals", limit=4), run_task(pruned, "quiz-capitals", limit=4)
    for a, b in zip(ours.per_question, reference.per_question):
        assert (a.pred, a.alt_preds) == (b.pred, b.alt_preds)
        assert a.scores == pytest.approx(b.scores, rel=TOL, abs=TOL)  # the in-memory scorer shares the few-shot prefix's KV cache


def test_embedded_mmlu_letter_scores_equal_in_memory(embedded, embedded_streamed, mmlu_dir):
    """Next-token letter scoring (MMLU, 1-shot) streamed equals the in-memory scorer."""
    options = {"mmlu_dir": str(mmlu_dir), "subjects": "astronomy", "shots": 1}
    ours = run_task(embedded_streamed, "mmlu", limit=4, **options)
    reference = run_task(embedded, "mmlu", limit=4, **options)
    for a, b in zip(ours.per_question, reference.per_question):
        assert a.pred == b.pred
        assert a.scores == pytest.approx(b.scores, rel=TOL, abs=TOL)  # the in-memory scorer shares the few-shot prefix's KV cache


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_families_stream_exactly(family, embedded, tmp_path):
    folder = family_folder(family, embedded.tokenizer, tmp_path)
    loaded = load_model(folder, device="cpu")
    streamed = open_streamed(folder, device="cpu", spill="disk" if family == "llama" else "auto")
    samples = make_samples(embedded.tokenizer, "embedded", 5, 24).ids
    assert max_gap(compute_distances(streamed, samples, 2).distances, compute_distances(loaded, samples, 2).distances) < TOL
    assert validation_loss(streamed.pruned(1, 1), samples=3, seq_len=24, batch_size=2) == pytest.approx(
        validation_loss(prune_block(loaded, 1, 1).loaded, samples=3, seq_len=24, batch_size=2), abs=TOL
    )
    requests = [("The capital of France is", " Paris"), ("The capital of France is", " Rome"), ("One two", " three four")]
    for (a, n_a, g_a), (b, n_b, g_b) in zip(loglikelihoods(streamed, requests), loglikelihoods(loaded, requests)):
        assert (n_a, g_a) == (n_b, g_b) and a == pytest.approx(b, abs=TOL)


def test_all_token_metrics_stream_like_in_memory(embedded, tmp_path):
    """The metrics ride the same recording pass as the distances, so a streamed model gives
    the all-token distances and Block Influence too, equal to the in-memory ones."""
    folder = family_folder("llama", embedded.tokenizer, tmp_path)
    samples = make_samples(embedded.tokenizer, "embedded", 5, 24).ids
    streamed = compute_scores(open_streamed(folder, device="cpu"), samples, 2)
    loaded = compute_scores(load_model(folder, device="cpu"), samples, 2)
    assert (streamed.samples, streamed.tokens) == (loaded.samples, loaded.tokens)
    for name in ("last_token", "all_tokens"):
        assert max_gap(getattr(streamed, name), getattr(loaded, name)) < TOL
    assert max_gap([streamed.layer_influence], [loaded.layer_influence]) < TOL


def test_bfloat16_streams_like_bfloat16_in_memory(embedded, tmp_path):
    folder = family_folder("qwen2", embedded.tokenizer, tmp_path)
    loaded = load_model(folder, device="cpu", dtype=torch.bfloat16)
    streamed = open_streamed(folder, device="cpu", dtype=torch.bfloat16)
    samples = make_samples(embedded.tokenizer, "embedded", 4, 24).ids
    assert streamed.dtype == torch.bfloat16
    assert max_gap(compute_distances(streamed, samples, 2).distances, compute_distances(loaded, samples, 2).distances) < TOL


def test_unstreamable_inputs_are_refused(embedded, tmp_path):
    from transformers import Gemma3Config

    assert "multimodal" in unsupported_reason(Gemma3Config())
    with pytest.raises(ExplorerError, match="not GGUF"):
        open_streamed(str(embedded_gguf_path()), device="cpu")
    folder = tmp_path / "no-weights"
    folder.mkdir()
    shutil.copy(embedded_folder() / "config.json", folder)
    with pytest.raises(ExplorerError, match="no safetensors weights"):
        open_streamed(str(folder), device="cpu")
    with pytest.raises(ExplorerError, match="activation store"):
        open_streamed(str(embedded_folder()), device="cpu", spill="gpu")


def test_cli_stream_says_so_and_matches(embedded, tmp_path, capsys):
    folder = family_folder("llama", embedded.tokenizer, tmp_path)
    common = ["--model", folder, "--device", "cpu", "--samples", "4", "--seq-len", "24", "--batch-size", "2"]
    assert main(["similarity", *common, "--stream", "--activations", "disk", "--out", str(tmp_path / "s.json")]) == 0
    err = capsys.readouterr().err
    assert "streaming the model layer by layer (--stream)" in err and "kept on disk" in err
    assert "layers: 1/3" in err and "layers: 3/3" in err
    assert main(["loss", *common, "--stream", "--drop", "1:1", "--out", str(tmp_path / "ls.json")]) == 0
    assert main(["loss", *common, "--drop", "1:1", "--out", str(tmp_path / "lm.json")]) == 0
    streamed, in_memory = (json.loads((tmp_path / f).read_text())["loss"] for f in ("ls.json", "lm.json"))
    assert streamed == pytest.approx(in_memory, abs=TOL)
    task = ["--device", "cpu", "--task", "quiz-capitals", "--limit", "3", "--drop", "1:1"]
    assert main(["eval", "--model", folder, *task, "--stream", "--out", str(tmp_path / "es.json")]) == 0
    assert main(["eval", "--model", folder, *task, "--out", str(tmp_path / "em.json")]) == 0
    streamed, in_memory = (json.loads((tmp_path / f).read_text())["per_question"] for f in ("es.json", "em.json"))
    for a, b in zip(streamed, in_memory):
        assert a["pred"] == b["pred"] and a["scores"] == pytest.approx(b["scores"], abs=TOL)
    assert main(["loss", *common, "--drop", "one", "--out", str(tmp_path / "x.json")]) == 2
    assert "--drop takes START:N" in capsys.readouterr().err


def test_similarity_page_streams(embedded):
    """The page's toggle streams the model: the same distances as in memory and the same
    parameter count for the picked block (the architecture is read from the meta templates)."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file("../app.py", default_timeout=180)
    at.run()
    at.switch_page("pages/similarity.py").run()
    at.toggle(key="sim_stream").set_value(True).run()
    at.radio(key="sim_source").set_value(next(k for k, v in SOURCES.items() if v == EMBEDDED)).run()  # a fresh page opens on the newest heatmap's text
    at.number_input(key="sim_samples").set_value(3)
    at.number_input(key="sim_seq_len").set_value(24)
    at = at.button(key="sim_run").click().run()
    assert not at.exception and not at.error
    shown = at.session_state["similarity_result"]
    assert not shown["from_cache"]
    reference = compute_distances(embedded, make_samples(embedded.tokenizer, "embedded", 3, 24).ids, batch_size=8)
    assert max_gap(shown["result"]["distances"], reference.distances) < TOL
    at.number_input(key="block_start").set_value(3)
    at.number_input(key="block_n").set_value(3).run()
    params = sum(p.numel() for i in (3, 4, 5) for p in embedded.model.model.layers[i].parameters())
    assert f"{params / 1e6:.1f}M parameters" in at.success[0].value


def test_streams_by_itself_when_the_weights_do_not_fit(embedded, tmp_path):
    folder = family_folder("llama", embedded.tokenizer, tmp_path)
    fits, needed, _ = fits_in_memory(folder, "cpu")
    params = sum(p.numel() for p in load_model(folder, device="cpu").model.parameters())
    assert fits and needed == params * 4
    lines: list[str] = []
    assert isinstance(open_for_analysis(folder, False, "cpu", lines.append, free=needed), StreamedModel)
    assert lines and "streaming it layer by layer" in lines[0]
    assert not isinstance(open_for_analysis(folder, False, "cpu", lines.append, free=2 * needed), StreamedModel)
    assert len(lines) == 1

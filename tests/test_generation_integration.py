"""Generation tasks where an accuracy appears: the eval command, the heal evaluations and the Prune &
heal page's pane (views.generations), with the linear repair judged on the evaluation text."""

from __future__ import annotations

import json

import pytest

from explorer.cli import main
from explorer.core.errors import ExplorerError
from explorer.evaluation.evaluate import run_task
from explorer.lm.generate import Decoding, generate
from explorer.lm.models import load_model
from explorer.surgery.heal import HealConfig, prune_and_heal
from explorer.views.figures.heal import heal_figure
from explorer.views.generations import prompt_lines, repair_verdict, side_by_side
from tests.screen import seen, small_prune_page


def test_eval_prints_and_writes_the_generated_answers(tiny_llama_dir, tmp_path, capsys):
    out = tmp_path / "eval.json"
    assert main(["eval", "--model", str(tiny_llama_dir), "--task", "quiz-capitals-gen", "--limit", "3", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["metric"] == "exact_match" and len(data["per_question"]) == 3
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("accuracy ")
    for line, question in zip(printed[1:], data["per_question"], strict=True):
        assert line.startswith(("✓", "✗")) and question["id"] in line and repr(question["output"]) in line


def test_eval_of_a_streamed_model_refuses_generation(tmp_path, capsys):
    code = main(["eval", "--model", "embedded", "--stream", "--task", "arith", "--limit", "2", "--out", str(tmp_path / "x.json")])
    assert code == 2 and "in memory" in capsys.readouterr().err


def test_heal_evaluations_score_the_generation_task(tiny_llama_dir):
    copy = load_model(str(tiny_llama_dir), device="cpu")
    config = HealConfig(steps=1, eval_every=1, batch_size=2, seq_len=16, eval_task="quiz-capitals", eval_limit=2, val_samples=2,
                        quantize=False, gen_task="quiz-capitals-gen", gen_limit=2)
    events: list[dict] = []
    outcome = prune_and_heal(copy, 1, 2, config, on_event=events.append)
    for name in ("before_pruning", "after_pruning", "healed"):
        metrics = outcome.metrics[name]
        assert metrics["gen_task"] == "quiz-capitals-gen" and 0 <= metrics["gen_accuracy"] <= 1
        assert len(metrics["gen_examples"]) == 2 and all(e["output"] is not None for e in metrics["gen_examples"])
    names = {trace.name for trace in heal_figure(events, 1).data}
    assert "accuracy by generation (quiz-capitals-gen)" in names
    with pytest.raises(ExplorerError, match="not a generation task"):
        HealConfig(gen_task="quiz-capitals").check()


def test_side_by_side_completions(tiny_llama):
    prompts = prompt_lines("The capital of France is\n\n  \nQuestion: 2 + 2?\\nAnswer:")
    assert prompts == ["The capital of France is", "Question: 2 + 2?\nAnswer:"]
    pruned = tiny_llama.pruned(1, 2)
    table = side_by_side({"unpruned": tiny_llama, "pruned": pruned}, prompts, new_tokens=6)
    assert list(table.columns) == ["prompt", "unpruned", "pruned"] and list(table.prompt) == prompts
    assert list(table.pruned) == [g.text for g in generate(pruned, prompts, Decoding(max_new_tokens=6))]
    with pytest.raises(ExplorerError, match="at least one prompt"):
        prompt_lines(" \n ")
    with pytest.raises(ExplorerError, match="at most 8"):
        prompt_lines("\n".join("p" for _ in range(9)))


def test_repair_verdict_says_when_the_repair_hurts():
    """The issue's numbers: a repair that raises the held-out loss on the user's text is named as such."""
    hurt, bad = repair_verdict({"pruned": {"val_loss": 4.18}, "linear repair": {"val_loss": 4.30}}, "licence.txt")
    assert bad and "made the held-out loss on licence.txt worse: 4.180 pruned, 4.300 repaired" in hurt
    helped, bad = repair_verdict({"pruned": {"val_loss": 7.54}, "linear repair": {"val_loss": 5.91}}, "embedded")
    assert not bad and "lowered the held-out loss on the embedded news corpus: 7.540 pruned, 5.910 repaired" in helped
    assert repair_verdict({"pruned": {"val_loss": 1.0}}, "embedded") is None


@pytest.mark.slow
def test_prune_page_pane_and_verdict(embedded):
    """The page in-process (AppTest): prune with a linear repair, read the verdict, then generate two
    prompts side by side with every model."""

    at = small_prune_page()
    at.radio(key="ph_repair").set_value("linear")
    at.button(key="ph_prune").click().run()
    assert not at.exception and not at.error
    verdicts = [seen(m.value) for m in [*at.warning, *at.caption] if "linear repair" in seen(m.value) and "held-out loss" in seen(m.value)]
    assert len(verdicts) == 1
    at.text_area(key="ph_gen_prompts").set_value("The capital of France is\nOnce upon a time")
    at.button(key="ph_gen").click().run()
    assert not at.exception and not at.error
    [table] = [d.value for d in at.dataframe if list(d.value.columns)[:1] == ["prompt"]]
    assert list(table.columns) == ["prompt", "unpruned", "pruned", "linear repair"]
    assert table.unpruned.iloc[0] == generate(embedded, ["The capital of France is"], Decoding(max_new_tokens=32))[0].text
    at.number_input(key="ph_gen_limit").set_value(3)
    at.button(key="ph_gen_score").click().run()
    assert not at.exception and not at.error
    [scores] = [d.value for d in at.dataframe if "accuracy by generation (quiz-capitals-gen)" in d.value.columns]
    assert list(scores.model) == ["unpruned", "pruned", "linear repair"]
    unpruned = run_task(embedded, "quiz-capitals-gen", 3)
    assert scores["accuracy by generation (quiz-capitals-gen)"].iloc[0].startswith(f"{unpruned.accuracy:.0%} [")


def _point(n: int, repair: str, accuracy: float, gen: float, loss: float) -> dict:
    return {"kind": "point", "strategy": "simple", "n": n, "fraction": n / 30, "healed": False, "repair": repair, "start": 29 - n,
            "num_layers": 30, "task": "quiz-capitals", "accuracy": accuracy, "ci_low": accuracy - 0.1, "ci_high": accuracy + 0.1,
            "chance": 0.25, "val_loss": loss, "val_loss_se": 0.01, "normalized_loss": loss / 10, "normalized_loss_se": 0.001,
            "gen_task": "quiz-capitals-gen", "gen_accuracy": gen, "gen_ci_low": max(0.0, gen - 0.1), "gen_ci_high": gen + 0.1,
            "gen_chance": 0.0, "repetition_4": 0.1 + n / 100, "distinct_2": 0.9, "reference_logprob": -3.0, "seconds": 1.0,
            "shared": False}


def test_sweep_page_draws_the_generative_curve_and_the_verdicts(embedded):
    from streamlit.testing.v1 import AppTest

    from explorer.experiments.sweep import SweepSettings
    from explorer.state.store import Store

    store = Store()
    settings = SweepSettings(model="embedded", device="cpu", strategies=("simple",), stride=6, limit=8, repair="linear",
                             gen_task="quiz-capitals-gen", gen_limit=5, continuations=2)
    run_id = store.create_run("sweep", embedded.name, settings.to_json(), status="done")
    try:
        for point in (_point(0, "none", 0.8, 0.6, 3.0), _point(6, "none", 0.6, 0.0, 4.18), _point(6, "linear", 0.6, 0.1, 4.30)):
            store.add_event(run_id, point)
        at = AppTest.from_file("../app.py", default_timeout=180)
        at.run()
        at.switch_page("pages/sweep.py").run()
        assert not at.exception, at.exception
        assert at.selectbox(key="sw_gen_task").value == "quiz-capitals-gen"
        assert (at.number_input(key="sw_gen_limit").value, at.number_input(key="sw_continuations").value) == (5, 2)
        captions = " | ".join(c.value for c in at.caption)
        assert "**simple**: from 20% (n = 6)" in captions  # the generative floor
        assert any("made the held-out loss worse, 4.180 -> 4.300" in seen(w.value) for w in at.warning)
    finally:
        store.delete_run(run_id)

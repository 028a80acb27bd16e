"""The sweep's generative curve, free continuations and repair verdicts (issue 21): every point
records a generation task's accuracy and the repetition rate of what the model writes, measured on
the point's own model (never replayed from the unpruned recording), and each linear repair is
judged on the sweep's own text."""

from __future__ import annotations

import pytest

from explorer.core.errors import ExplorerError
from explorer.evaluation.degeneration import DegenerationSettings, degeneration
from explorer.evaluation.evaluate import run_task
from explorer.experiments.sweep import (
    SweepSettings,
    describe_point,
    describe_verdict,
    first_at_chance,
    point_key,
    repair_verdicts,
    run_sweep,
    start_sweep,
)
from explorer.lm.blocks import Block
from explorer.lm.layers import pruned_view
from explorer.state.store import Store
from explorer.views.figures.sweep import accuracy_figure, generation_figure, points_frame

SETTINGS = dict(model="tiny", strategies=("simple",), fractions=(0.0, 0.5), limit=4, val_samples=4, sim_samples=4,
                seq_len=16, batch_size=4, repair="linear", repair_samples=16, gen_task="quiz-capitals-gen", gen_limit=3,
                continuations=2)


@pytest.fixture(scope="module")
def swept(tiny_llama, tmp_path_factory):
    store = Store(tmp_path_factory.mktemp("gen-sweep") / "runs.sqlite")
    settings = SweepSettings(**SETTINGS)
    return settings, run_sweep(tiny_llama, settings, store, start_sweep(store, settings))


def test_points_record_the_generation_task_and_the_continuations(tiny_llama, swept):
    """Each point's generative numbers equal the task and the diagnostics run on that point's model."""
    settings, result = swept
    by_key = {point_key(p): p for p in result["points"]}
    assert sorted(by_key) == [("simple", 0, "linear"), ("simple", 0, "none"), ("simple", 2, "linear"), ("simple", 2, "none")]
    point = by_key[("simple", 2, "none")]
    view = pruned_view(tiny_llama, Block(point["start"], 2, tiny_llama.num_layers))
    report = run_task(view, "quiz-capitals-gen", limit=3, batch_size=4)
    assert point["gen_task"] == "quiz-capitals-gen" and point["gen_accuracy"] == report.accuracy
    assert [e["output"] for e in point["gen_examples"]] == [r.output for r in report.per_question]
    free = degeneration(view, DegenerationSettings(samples=2, batch_size=4), reference=tiny_llama)
    assert point["repetition_4"] == pytest.approx(free["repetition_4"])
    assert point["reference_logprob"] == pytest.approx(free["reference_logprob"], abs=1e-4)
    assert point["continuation_examples"] == free["continuations"][:3]
    assert "by generation (quiz-capitals-gen)" in describe_point(point) and "4-gram repetition" in describe_point(point)
    assert set(result["gen_first_at_chance"]) == {"simple", "simple linear"}


def test_generative_figure_and_frame(swept):
    _, result = swept
    frame = points_frame(result["points"])
    assert {"gen_accuracy", "repetition_4"} <= set(frame.columns) and frame.gen_accuracy.notna().all()
    figure = generation_figure(result["points"])
    assert {t.name for t in figure.data if t.name} >= {"simple by generation", "simple linear by generation"}
    assert {t.name for t in accuracy_figure(result["points"]).data if t.name} == {"simple", "simple linear"}


def test_repair_verdicts_say_when_a_repair_hurts(swept):
    _, result = swept
    [verdict] = result["repair_verdicts"]
    assert verdict["n"] == 2 and verdict["hurts"] == (verdict["repaired_loss"] > verdict["pruned_loss"])
    hurt = {**verdict, "pruned_loss": 4.18, "repaired_loss": 4.30, "hurts": True}
    assert describe_verdict(hurt).endswith("made the held-out loss worse, 4.180 -> 4.300")
    points = [{"strategy": "s", "n": 5, "fraction": 0.2, "start": 20, "repair": "none", "val_loss": 7.54},
              {"strategy": "s", "n": 5, "fraction": 0.2, "start": 20, "repair": "linear", "val_loss": 5.91}]
    [better] = repair_verdicts(points)
    assert not better["hurts"] and "lowered the held-out loss, 7.540 -> 5.910" in describe_verdict(better)


def test_generation_floor():
    points = [{"strategy": "s", "n": n, "repair": "none", "gen_ci_low": low, "gen_chance": 0.0, "ci_low": 0.5, "chance": 0.25}
              for n, low in ((0, 0.4), (3, 0.1), (6, 0.0), (9, 0.0))]
    assert first_at_chance(points, "s", prefix="gen_")["n"] == 6
    assert first_at_chance(points, "s") is None


def test_bad_generation_settings():
    with pytest.raises(ExplorerError, match="not a generation task"):
        SweepSettings(gen_task="quiz-capitals").check()
    with pytest.raises(ExplorerError, match="at least 1"):
        SweepSettings(gen_task="quiz-capitals-gen", gen_limit=0).check()
    with pytest.raises(ExplorerError, match="continuations"):
        SweepSettings(continuations=-1).check()

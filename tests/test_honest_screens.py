"""Honest screens (issue 20): time estimates from what this machine measured, the first model load
saying what it does, the Repair choice never ignored, the mergekit YAML of a repaired or healed
model labelled, every accuracy with its n, the Prune comparison a stored run that reattaches, the
Sweep page's words computed from its curve with a fixed x axis, `prune --similarity` reusing a
heatmap and saying which calibration chose the block, and the hub-only commands failing in one line."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from streamlit import config
from streamlit.testing.v1 import AppTest

from explorer.cli import main
from explorer.core.paths import explorer_home
from explorer.evaluation.accuracy import question_count, with_n
from explorer.export.folder import save_model
from explorer.lm.models import embedded_ready
from explorer.state.store import Store
from explorer.surgery.heal import HealConfig
from explorer.surgery.prune import prune_block
from explorer.surgery.repair import RepairConfig, repair_record
from explorer.views.figures.sweep import accuracy_figure, curve_story, loss_figure
from explorer.views.preview import comparison_frame
from explorer.views.progress import estimate_text, heal_estimate, point_estimate, rate_estimate
from explorer.views.runs import mergekit_text
from tests.screen import seen
from tests.test_progress import heal_events

pytestmark = pytest.mark.usefixtures("own_rows")  # conftest: rows made here are deleted after each test

TIMEOUT = 300
HEAL = {"steps": 40, "batch_size": 4, "seq_len": 128, "eval_every": 10, "eval_limit": 32, "val_samples": 16}


# Estimates: each priced by the parts measured, checked against the sums done by hand.

def test_a_heal_is_priced_by_its_measured_steps_and_evaluations():
    past = [(HEAL, heal_events(10, eval_s=10.0, step_s=1.0, eval_every=5))]  # 1 s a step of 4 x 128, 10 s an evaluation
    double = {**HEAL, "steps": 80, "seq_len": 256, "eval_limit": 80}  # steps cost twice, evaluations (80+16)/(32+16) = 2x
    step_s, eval_s, load_s = 1.0 / (4 * 128), 10.0 / (32 + 16), 5.0
    by_hand = 80 * 4 * 256 * step_s + (len(range(10, 80, 10)) + 3) * (80 + 16) * eval_s + load_s
    assert heal_estimate(past, double) == pytest.approx(by_hand) == pytest.approx(160 + 10 * 20 + 5)
    assert heal_estimate([], double) is None


def test_points_are_priced_per_question_and_shared_or_resumed_points_count_as_nothing():
    run = [{"seconds": 6.0, "n_questions": 32}, {"seconds": 0.0, "shared": True, "n_questions": 32},
           {"seconds": 2.0, "n_questions": 32}, {"seconds": 9.0, "resumed": True, "n_questions": 32}]
    assert point_estimate([run], questions=64, points=10) == pytest.approx(8.0 / 64 * 64 * 10)
    assert point_estimate([[{"seconds": 1.0, "predictions": {"q1": "a", "q2": "b"}}]], 4, 3) == pytest.approx(6.0)
    assert rate_estimate([(10.0, 100), (30.0, 100)], 50) == pytest.approx(10.0)  # the median rate, 0.2 s a unit
    assert point_estimate([], 4, 3) is None and rate_estimate([], 5) is None


def test_estimates_say_where_they_come_from():
    assert estimate_text(420, "sweep", 5.14, 2) == ("About 7 min on this machine (timed on earlier sweeps of this model; "
                                                   "load now 5.1 on 2 cores: a busier machine takes longer).")
    assert estimate_text(42, "heatmap") == "About 40 s on this machine (timed on earlier heatmaps of this model)."
    assert estimate_text(None, "heal").startswith("No earlier heal on this machine to time it from")


def test_the_sweep_page_estimates_from_the_sweeps_measured_here(embedded):
    from explorer.experiments.sweep import SweepSettings

    store = Store()
    for earlier in store.list_runs("sweep", "done"):  # other tests' finished sweeps would price the estimate too
        store.delete_run(earlier.id)
    run_id = store.create_run("sweep", embedded.name, SweepSettings(model="embedded").to_json(), status="done")
    for seconds in (2.0, 2.0, 2.0, 2.0):  # 8 s for 4 points of 8 questions: 0.25 s a question
        store.add_event(run_id, {"kind": "point", "seconds": seconds, "n_questions": 8})
    at = AppTest.from_file("../app.py", default_timeout=TIMEOUT)
    at.run()
    at.switch_page("pages/sweep.py").run()
    points = 30 * 3  # every n of 30 layers, three strategies, 32 questions each: 90 x 32 x 0.25 s = 12 min
    assert any(seen(c.value).startswith(f"{points} points: About 12 min on this machine") for c in at.caption), \
        [c.value for c in at.caption]


# Every accuracy with its n.

def test_every_accuracy_says_its_n():
    rows = {"unpruned": {"val_loss": 3.0, "task": "quiz", "accuracy": 0.84, "ci_low": 0.7, "ci_high": 0.9, "chance": 0.25,
                         "n_questions": 32},
            "pruned": {"val_loss": 3.5, "task": "quiz", "accuracy": 0.81, "ci_low": 0.6, "ci_high": 0.9, "chance": 0.25,
                       "predictions": {str(i): "a" for i in range(16)}}}  # stored before n was kept: counted
    assert comparison_frame(rows)["questions (n)"].tolist() == [32, 16]
    assert with_n("accuracy 0.84", rows["unpruned"]) == "accuracy 0.84, n = 32" and question_count({}) is None


# The Sweep page's words follow the curve shown.

def point(strategy: str, n: int, accuracy: float, low: float, high: float, L: int = 30) -> dict:
    return {"strategy": strategy, "n": n, "fraction": n / L, "accuracy": accuracy, "ci_low": low, "ci_high": high,
            "chance": 0.25, "healed": False, "repair": "none", "n_questions": 64, "start": 0, "num_layers": L, "task": "quiz",
            "val_loss": 3.0, "val_loss_se": 0.01, "normalized_loss": 0.1, "normalized_loss_se": 0.01}


def test_the_words_say_what_each_curve_does():
    small = [point("simple", 0, 0.84, 0.74, 0.91), point("simple", 3, 0.47, 0.35, 0.59), point("simple", 6, 0.33, 0.23, 0.45)]
    big = [point("similarity", 0, 0.84, 0.74, 0.91), point("similarity", 3, 0.80, 0.69, 0.88),
           point("similarity", 6, 0.30, 0.20, 0.42)]
    story = curve_story(small + big)
    assert ("**simple**: 84% unpruned (n = 64); it drops at the first point measured (10% dropped: 47%), and reaches "
            "chance at 20%.") in story
    assert "**similarity**: 84% unpruned (n = 64); it holds to 10% dropped, then falls, and reaches chance at 20%." in story
    assert "holds within" in curve_story(big[:2]) and "stays above chance" in curve_story(big[:2])


def test_the_live_sweeps_x_axis_spans_the_plan_from_its_first_point():
    first = [point("simple", 0, 0.84, 0.74, 0.91)]
    for figure in (accuracy_figure(first, x_max=0.9), loss_figure(first, x_max=0.9)):
        low, high = figure.layout.xaxis.range
        assert low < 0 and math.isclose(high, 0.92)


# The mergekit YAML of a repaired or healed model says it rebuilds the unrepaired slice.

def test_mergekit_yaml_of_a_repaired_or_healed_model_is_labelled(tmp_path, tiny_llama):
    pruned = prune_block(tiny_llama, 1, 1)
    plain_prune = save_model(pruned.loaded, tmp_path / "p", "tiny", pruned.block, {"kind": "prune", "repair": {"method": "none"}})
    repaired = save_model(pruned.loaded, tmp_path / "r", "tiny", pruned.block, {"kind": "prune", "repair": repair_record(RepairConfig(), None)})
    healed = save_model(pruned.loaded, tmp_path / "h", "tiny", pruned.block, {"kind": "heal", "heal": HealConfig().to_json()})
    assert "NOTE" not in (plain_prune / "mergekit.yaml").read_text()
    assert "WITHOUT its repair: the saved model is linearly repaired" in (repaired / "mergekit.yaml").read_text()
    assert "the saved model is LoRA-healed" in (healed / "mergekit.yaml").read_text()
    store = Store()
    run_id = store.create_run("heal", "tiny", {"model": {"source": "tiny"}}, status="done")
    store.update_run(run_id, status="done", result={"kind": "heal", "model": "tiny", "block": {"start": 1, "n": 1, "num_layers": 4}})
    assert "LoRA-healed" in mergekit_text(store.get_run(run_id))  # rebuilt from the block: labelled too


# `prune --strategy similarity` reuses a heatmap and says which calibration chose the block.

def test_prune_reuses_a_heatmap_and_says_which(tiny_llama_dir, tmp_path, capsys):
    sim = tmp_path / "sim.json"
    model = ["--model", str(tiny_llama_dir)]
    assert main(["similarity", *model, "--samples", "3", "--seq-len", "16", "--out", str(sim)]) == 0
    capsys.readouterr()
    heatmap = json.loads(sim.read_text())
    best = next(e["layer"] for e in heatmap["optimal"] if e["n"] == 1)
    assert main(["prune", *model, "--strategy", "similarity", "--n", "1", "--similarity", str(sim),
                 "--out", str(tmp_path / "p1")]) == 0
    assert "block chosen by the similarity heatmap of sim.json (embedded text, 3 samples × 16 tokens)" in capsys.readouterr().err
    record = json.loads((tmp_path / "p1" / "run.json").read_text())
    assert record["block"]["start"] == best and record["similarity"]["chosen_by"].startswith("sim.json")
    run_id = next(r.id for r in Store().list_runs("similarity", "done") if r.model == str(tiny_llama_dir))
    assert main(["prune", *model, "--strategy", "similarity", "--n", "1", "--similarity", str(run_id),
                 "--out", str(tmp_path / "p2")]) == 0
    assert f"block chosen by the similarity heatmap of run #{run_id} (embedded text, 3 samples" in capsys.readouterr().err
    sim.write_text(json.dumps({**heatmap, "model": "another model"}))
    assert main(["prune", *model, "--strategy", "similarity", "--n", "1", "--similarity", str(sim),
                 "--out", str(tmp_path / "p3")]) == 2
    assert "was computed on another model (4 layers)" in capsys.readouterr().err


# Commands that need the hub say so offline in one line; the embedded recipe works offline.

def test_the_paper_recipe_dry_run(capsys):
    assert main(["heal", "--model", "embedded", "--start", "20", "--n", "6", "--recipe", "paper", "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out)["recipe"] == "paper"
    code = main(["heal", "--model", "meta-llama/Llama-2-7b-hf", "--start", "20", "--n", "8", "--recipe", "paper", "--dry-run"])
    if code == 2:  # offline (or the gated repo refused): one line naming the hub
        [line] = capsys.readouterr().err.strip().splitlines()
        assert "Hugging Face hub" in line and "meta-llama/Llama-2-7b-hf" in line


# The Prune comparison is a stored run that reattaches; the Repair choice is never ignored.

def small_evaluation(at: AppTest) -> None:
    for key, value in (("ph_limit", 4), ("ph_val", 2), ("ph_seq", 32), ("ph_steps", 2), ("ph_every", 1)):
        at.number_input(key=key).set_value(value)
    at.number_input(key="ph_start").set_value(20)
    at.number_input(key="ph_n").set_value(2).run()


@pytest.mark.slow
def test_the_prune_comparison_is_a_run_that_reattaches_and_the_repair_is_done(embedded):
    at = AppTest.from_file("../app.py", default_timeout=TIMEOUT)
    at.run()
    at.switch_page("pages/prune_heal.py").run()
    small_evaluation(at)
    at.radio(key="ph_repair").set_value("linear").run()
    at.button(key="ph_prune").click().run()
    assert not at.exception, at.exception
    preview = Store().list_runs("preview")[0]  # the newest: other tests' comparisons may be in the store
    assert preview.status == "done" and list(preview.result["rows"]) == ["unpruned", "pruned", "linear repair"]
    assert any(b.label == "mergekit YAML (unrepaired slice)" for b in at.get("download_button"))
    assert at.dataframe[0].value["questions (n)"].tolist() == [4, 4, 4]
    at.button(key="ph_save").click().run()  # the stored comparison's model, pruned and refitted again to be saved
    [saved] = [seen(i.value) for i in at.info if "Saved to" in seen(i.value)]
    record = json.loads((Path(saved.removeprefix("Saved to ").split(" (weights")[0]) / "run.json").read_text())
    assert record["repair"]["method"] == "linear" and record["block"]["start"] == 20
    assert record["quick_eval"]["linear repair"]["accuracy"] == preview.result["rows"]["linear repair"]["accuracy"]

    again = AppTest.from_file("../app.py", default_timeout=TIMEOUT)  # a reload: the same visitor, a new session
    again.query_params["visitor"] = at.session_state["visitor"]
    again.run()
    again.switch_page("pages/prune_heal.py").run()
    assert any(f"prune comparison run #{preview.id}" in seen(s.value) for s in again.success)
    config.set_option("server.address", "0.0.0.0")  # another visitor of a served room does not get it
    try:
        stranger = AppTest.from_file("../app.py", default_timeout=TIMEOUT)
        stranger.run()
        stranger.switch_page("pages/prune_heal.py").run()
        assert not stranger.success
    finally:
        config.set_option("server.address", "127.0.0.1")

    at.radio(key="ph_repair").set_value("LoRA heal").run()
    assert at.button(key="ph_prune").disabled  # a plain prune would ignore the choice: Start healing does it
    at.radio(key="ph_repair").set_value("linear").run()
    at.button(key="ph_heal").click().run()
    heal = Store().list_runs("heal")[0]  # the newest: other tests' heals may be in the store
    assert heal.settings["repair"]["source"] == "embedded" and heal.settings["repair"]["seq_len"] == 32
    assert heal.owner == at.session_state["visitor"]


# The first model load says what it does.

@pytest.mark.slow
def test_the_first_load_of_the_embedded_model_says_what_it_does(tmp_path, monkeypatch):
    monkeypatch.setenv("EXPLORER_HOME", str(tmp_path))  # a machine that never loaded it
    assert not embedded_ready()
    at = AppTest.from_file("../app.py", default_timeout=600)
    at.run()
    at.switch_page("pages/sweep.py").run()
    assert not at.exception, at.exception
    said = " ".join(m.value for m in at.markdown)
    assert "1 of 2 · Dequantizing SmolLM2-135M's GGUF" in said and "2 of 2 · Loading the copy" in said
    assert embedded_ready() and (explorer_home() / "models").is_dir()

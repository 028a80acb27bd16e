"""Honest progress from synthetic event lists: one duration format, an ETA that prices the
evaluations in and never sits at 0 s while work remains, sweep points done / total; and the
per-role torch thread policy."""

from __future__ import annotations

import pytest

from explorer.core.threads import threads_for
from explorer.views.progress import current_phase, format_duration, heal_progress, progress_text, sweep_progress


@pytest.mark.parametrize("seconds, text", [
    (0, "0 s"), (0.4, "0 s"), (59.4, "59 s"), (59.6, "1 min 0 s"), (60, "1 min 0 s"), (61, "1 min 1 s"),
    (119.5, "2 min 0 s"), (179.99, "3 min 0 s"), (3599.6, "1 h 0 min"), (3725, "1 h 2 min"), (-3, "0 s"),
])
def test_durations_never_show_60_in_the_seconds_slot(seconds, text):
    assert format_duration(seconds) == text


def heal_events(steps_done: int, *, eval_s: float = 10.0, step_s: float = 1.0, eval_every: int = 5) -> list[dict]:
    """A heal job's events as heal_job records them: eval phases take eval_s, steps step_s."""
    events, t = [], 0.0

    def add(event: dict, took: float = 0.0) -> None:
        nonlocal t
        t += took
        events.append({**event, "time": t})

    add({"kind": "phase", "step": 0, "phase": "loading the model"})
    add({"kind": "phase", "step": 0, "phase": "evaluating the unpruned model"}, 5.0)
    add({"kind": "reference", "step": 0}, 0.1)  # cached: it must not make evaluations look cheap
    add({"kind": "phase", "step": 0, "phase": "preparing adapters"})
    add({"kind": "phase", "step": 0, "phase": "evaluating the pruned model"}, 2.0)
    add({"kind": "eval", "step": 0}, eval_s)
    add({"kind": "phase", "step": 0, "phase": "training"})
    for step in range(1, steps_done + 1):
        add({"kind": "train", "step": step}, step_s)
        if step % eval_every == 0:
            add({"kind": "phase", "step": step, "phase": f"evaluating at step {step}"})
            add({"kind": "eval", "step": step}, eval_s)
            add({"kind": "phase", "step": step, "phase": "training"})
    return events


def test_heal_eta_prices_evaluations_and_steps():
    events = heal_events(2)
    now = events[-1]["time"]
    state = heal_progress(events, steps=20, eval_every=5, now=now)
    # 18 steps, periodic evaluations at 5, 10, 15, the merge (priced as a step until measured) and the healed evaluation
    assert state["eta_s"] == pytest.approx(18 * 1.0 + 3 * 10.0 + 1.0 + 10.0)
    assert (state["step"], state["phase"]) == (2, "training")
    assert state["fraction"] == pytest.approx(now / (now + state["eta_s"]))  # by time: evaluations count too


def test_heal_eta_is_unknown_until_measured_then_counts_down_smoothly():
    assert heal_progress(heal_events(0), 20, 5, now=20.0)["eta_s"] is None  # no step measured yet
    events = heal_events(5)[:-2]  # inside the evaluation at step 5
    started = events[-1]["time"]
    assert events[-1]["phase"] == "evaluating at step 5"
    etas = [heal_progress(events, 20, 5, now=started + dt)["eta_s"] for dt in (0, 3, 6, 9, 12, 30, 60)]
    assert all(a > b for a, b in zip(etas[:4], etas[1:4]))  # counts down while within the estimate
    assert min(etas) > 15 * 1.0  # never below the work still certainly ahead
    overrun = etas[4:]
    assert all(e > 0 for e in overrun) and overrun == sorted(overrun)  # an overrun grows the estimate, never 0 s


def test_heal_eta_after_training_covers_merge_and_the_last_evaluation():
    events = heal_events(9)  # the last step (10) has no periodic evaluation: the healed model's replaces it
    events.append({"kind": "train", "step": 10, "time": events[-1]["time"] + 1.0})
    events.append({"kind": "phase", "step": 10, "phase": "merging the adapter", "time": events[-1]["time"]})
    state = heal_progress(events, steps=10, eval_every=5, now=events[-1]["time"])
    assert state["phase"] == "merging the adapter" and state["eta_s"] == pytest.approx(1.0 + 10.0)
    events.append({"kind": "phase", "step": 10, "phase": "evaluating the healed model", "time": events[-1]["time"] + 2.0})
    state = heal_progress(events, steps=10, eval_every=5, now=events[-1]["time"] + 4.0)
    assert state["eta_s"] == pytest.approx(10.0 - 4.0)


def test_sweep_progress_counts_points_and_prices_the_rest():
    events = [{"kind": "phase", "phase": "loading the model", "time": 0.0},
              {"kind": "point", "seconds": 0.0, "resumed": True, "time": 1.0},
              {"kind": "plan", "points": 6, "time": 1.0},
              {"kind": "phase", "phase": "measuring 5 points", "time": 1.0},
              {"kind": "point", "seconds": 4.0, "time": 5.0},
              {"kind": "point", "seconds": 6.0, "time": 11.0}]
    state = sweep_progress(events, now=11.0)
    assert (state["done"], state["total"], state["phase"]) == (3, 6, "measuring 5 points")
    assert state["eta_s"] == pytest.approx(3 * 5.0)  # mean of the measured points, not of the resumed one
    assert sweep_progress(events, now=14.0)["eta_s"] == pytest.approx(2 + 2 * 5.0)
    assert sweep_progress(events[:4], now=3.0)["eta_s"] is None
    assert current_phase([]) is None


def test_progress_text_says_when_the_eta_is_not_known_yet():
    assert progress_text(["Run #3", None, "training"], 59.6) == "Run #3 · training · about 1 min 0 s left"
    assert progress_text(["Run #3"], None) == "Run #3 · ETA after the first measurements"


def test_thread_policy_splits_the_cores_and_honours_the_override():
    assert [threads_for(role, 2, {}) for role in ("server", "runner", "cli")] == [1, 1, 2]
    assert [threads_for(role, 16, {}) for role in ("server", "runner", "cli")] == [4, 12, 16]
    assert threads_for("runner", 1, {}) == 1
    assert threads_for("server", 16, {"EXPLORER_TORCH_THREADS": "3"}) == 3
    assert threads_for("cli", 16, {"OMP_NUM_THREADS": "2"}) == 2
    assert threads_for("cli", 16, {"EXPLORER_TORCH_THREADS": "nonsense"}) == 16
    with pytest.raises(ValueError, match="Unknown process role"):
        threads_for("gpu", 2, {})

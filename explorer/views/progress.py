"""Progress and ETA of a background job, as pure functions of its stored events.

Pages and the CLI only format what these return, so every screen tells the same story and the
tests check it with synthetic event lists. Events are the store's dicts in the order they were
added (each with "kind" and "time"; a heal run's also with its training "step"). A heal run's
work is a sequence of items, each priced by measurement: evaluations (the time from an
"evaluating ..." phase event to its "eval" event), training steps (the time from the previous
event to a "train" event) and merging (its phase to the next event). The ETA is the sum of the
items still to do; the item in progress is priced at its estimate minus the time it has run,
but never below a tenth of that estimate or of the time it has already taken, so an overrunning
phase never shows "0 s" and then jumps.
"""

from __future__ import annotations

import statistics

MIN_LEFT = 0.1  # the item in progress always has at least this fraction of max(estimate, elapsed) left


def format_duration(seconds: float) -> str:
    """'45 s', '1 min 0 s', '2 h 5 min': rounded to whole seconds BEFORE splitting, so 59.6 s is
    '1 min 0 s' and never '60 s' in the seconds slot."""
    total = max(0, int(round(seconds)))
    if total < 60:
        return f"{total} s"
    if total < 3600:
        minutes, secs = divmod(total, 60)
        return f"{minutes} min {secs} s"
    hours, rest = divmod(total, 3600)
    return f"{hours} h {rest // 60} min"


def current_phase(events: list[dict]) -> str | None:
    """The latest phase label, or None before the job recorded one."""
    return next((e["phase"] for e in reversed(events) if e.get("kind") == "phase"), None)


def _left(estimate: float, elapsed: float) -> float:
    """Time left of the item in progress (see the module docstring for the floor)."""
    return max(estimate - elapsed, MIN_LEFT * max(estimate, elapsed))


def _durations(events: list[dict], kind: str) -> list[float]:
    """Seconds each event of `kind` took: its time minus the previous event's time."""
    return [e["time"] - prev["time"] for prev, e in zip(events, events[1:]) if e.get("kind") == kind]


def _phase_durations(events: list[dict], prefix: str) -> list[float]:
    """Seconds from each phase event starting with `prefix` to the event after it."""
    return [nxt["time"] - e["time"] for e, nxt in zip(events, events[1:])
            if e.get("kind") == "phase" and e["phase"].startswith(prefix)]


def heal_progress(events: list[dict], steps: int, eval_every: int, now: float) -> dict:
    """{"step", "fraction", "eta_s", "phase"} of a heal run: eta_s is None until one evaluation
    and one training step were measured (before that any figure would be a guess)."""
    train = [e for e in events if e.get("kind") == "train"]
    step = train[-1]["step"] if train else 0
    phase = current_phase(events)
    step_times = _durations(events, "train")
    eval_times = _durations(events, "eval")
    done = {"step": step, "fraction": min(1.0, step / steps) if steps else 0.0, "eta_s": None, "phase": phase}
    if not (step_times and eval_times):
        return done
    step_s, eval_s = statistics.median(step_times), statistics.median(eval_times)
    merge_s = statistics.median(_phase_durations(events, "merging") or [step_s])
    evals_done = {e["step"] for e in events if e.get("kind") == "eval" and not e.get("merged")}
    periodic_left = sum(1 for s in range(eval_every, steps, eval_every) if s not in evals_done)
    merged = any(e.get("merged") for e in events if e.get("kind") == "eval")
    elapsed, last = now - events[-1]["time"], events[-1]
    label = last["phase"] if last.get("kind") == "phase" else ""
    after_training = merge_s + eval_s  # merging the adapter, then evaluating the healed model
    if label.startswith("evaluating the healed") or label.startswith("saving") or merged:
        current, rest = _left(eval_s if label.startswith("evaluating") else merge_s, elapsed), 0.0
    elif label.startswith("merging"):
        current, rest = _left(merge_s, elapsed), eval_s
    elif label.startswith("evaluating"):  # the pruned model (step 0) or a periodic one, counted in periodic_left
        current = _left(eval_s, elapsed)
        rest = (steps - step) * step_s + max(0, periodic_left - (step > 0)) * eval_s + after_training
    elif step < steps:
        current = _left(step_s, elapsed)
        rest = (steps - step - 1) * step_s + periodic_left * eval_s + after_training
    else:  # the last step ran, the merge has not started yet
        current, rest = _left(merge_s, elapsed), eval_s
    eta = current + rest
    ran = now - events[0]["time"]
    return {**done, "eta_s": eta, "fraction": ran / (ran + eta) if ran + eta > 0 else done["fraction"]}


def sweep_progress(events: list[dict], now: float) -> dict:
    """{"done", "total", "eta_s", "phase"} of a sweep run: points measured out of the plan, and
    the ETA from the mean time of the points this run measured (resumed ones cost nothing);
    None until one point was measured."""
    plans = [e["points"] for e in events if e.get("kind") == "plan"]
    points = [e for e in events if e.get("kind") == "point"]
    total = plans[-1] if plans else None
    measured = [p["seconds"] for p in points if not p.get("resumed") and "seconds" in p]
    state = {"done": len(points), "total": total, "eta_s": None, "phase": current_phase(events)}
    if total is None or not measured or not events:
        return state
    per_point = sum(measured) / len(measured)
    left = total - len(points)
    if left <= 0:
        return {**state, "eta_s": 0.0}
    elapsed = now - events[-1]["time"]
    return {**state, "eta_s": _left(per_point, elapsed) + (left - 1) * per_point}


def progress_text(parts: list[str | None], eta_s: float | None) -> str:
    """' · '-joined status parts with the ETA formatted the one way (or 'ETA after the first
    measurements' while it cannot be priced yet)."""
    eta = "ETA after the first measurements" if eta_s is None else f"about {format_duration(eta_s)} left"
    return " · ".join([p for p in parts if p] + [eta])

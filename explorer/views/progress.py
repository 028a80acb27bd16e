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

import os
import statistics

from explorer.evaluation.accuracy import question_count
from explorer.state.store import Store, of_kind
from explorer.views.session import model_name

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


# Time estimates before a long action starts, from what this machine measured on earlier runs of
# the same kind and model (the store keeps every run's events with their times). Each kind is
# priced by the parts it repeats, each scaled by the one size that drives it: a heal's training
# step by its tokens (batch x sequence length) and its evaluation by its questions and documents,
# a sweep's and a classification's point by its questions, a heatmap by its sample tokens, a
# brute force by its candidate blocks. None when nothing comparable was measured yet: no guess.

def _median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None and v >= 0]
    return statistics.median(values) if values else None


def heal_estimate(past: list[tuple[dict, list[dict]]], heal: dict) -> float | None:
    """Seconds a heal with these HealConfig values takes, from earlier heals' (settings["heal"],
    events): training steps priced per token, evaluations per (question + held-out document),
    plus the median model load (its first phase to the next event)."""
    step_rates, eval_rates, loads = [], [], []
    for settings, events in past:
        step_rates += [d / (settings["batch_size"] * settings["seq_len"]) for d in _durations(events, "train")]
        eval_rates += [d / (settings["eval_limit"] + settings["val_samples"]) for d in _durations(events, "eval")]
        loads += _phase_durations(events, "loading")
    step_rate, eval_rate = _median(step_rates), _median(eval_rates)
    if step_rate is None or eval_rate is None:
        return None
    evaluations = len(range(heal["eval_every"], heal["steps"], heal["eval_every"])) + 3  # unpruned, pruned, periodic, healed
    return (heal["steps"] * heal["batch_size"] * heal["seq_len"] * step_rate
            + evaluations * (heal["eval_limit"] + heal["val_samples"]) * eval_rate + (_median(loads) or 0.0))


def point_estimate(past: list[list[dict]], questions: int, points: int) -> float | None:
    """Seconds for `points` sweep points of `questions` questions each, from earlier sweeps' point
    events (one list per run): each run's measured seconds over its questions (points shared with
    another strategy, or resumed from an earlier run, cost nothing and count as nothing)."""
    rates = []
    for run_points in past:
        measured = [p for p in run_points if not p.get("resumed")]
        asked = sum(question_count(p) or 0 for p in measured if not p.get("shared"))
        if asked:
            rates.append(sum(p.get("seconds") or 0.0 for p in measured) / asked)
    rate = _median(rates)
    return None if rate is None else rate * questions * points


def rate_estimate(past: list[tuple[float, float]], work: float) -> float | None:
    """Seconds for `work` units (sample tokens of a heatmap, candidate blocks of a brute force) at the
    median seconds per unit of earlier runs, given as (seconds, units) pairs."""
    return None if (rate := _median([seconds / units for seconds, units in past if units > 0])) is None else rate * work


def estimate_text(seconds: float | None, what: str, load: float | None = None, cores: int | None = None) -> str:
    """'about 7 min on this machine (timed on earlier heal runs; load now 5.1 on 2 cores: a busier
    machine takes longer)', or why there is no estimate yet."""
    busy = f"; load now {load:.1f} on {cores} cores: a busier machine takes longer" if load is not None and cores else ""
    if seconds is None:
        return f"No earlier {what} on this machine to time it from: the first one sets the estimate{busy}."
    rounded = f"{max(1, round(seconds / 60))} min" if seconds >= 90 else f"{max(5, round(seconds / 5) * 5)} s"
    return f"About {rounded} on this machine (timed on earlier {what}s of this model{busy})."


def _done(store: Store, kind: str, model: str, last: int = 5) -> list:
    """The newest finished runs of a kind on this model (a source or a loaded name), at most `last`."""
    return [r for r in store.list_runs(kind, "done") if model_name(r.model) == model_name(model)][:last]


def machine_load() -> tuple[float | None, int]:
    """The 1-minute load average (None where the system has none) and the number of cores."""
    try:
        return os.getloadavg()[0], os.cpu_count() or 1
    except OSError:
        return None, os.cpu_count() or 1


def estimate_heal(store: Store, model: str, heal: dict) -> float | None:
    return heal_estimate([(r.settings["heal"], store.events(r.id)) for r in _done(store, "heal", model)], heal)


def estimate_sweep(store: Store, model: str, limit: int, points: int, healed: bool) -> float | None:
    """A sweep of `points` points of `limit` questions, from earlier sweeps that healed (or did not) alike."""
    past = [r for r in _done(store, "sweep", model, last=20) if bool(r.settings.get("heal_steps")) == healed][:5]
    return point_estimate([of_kind(store.events(r.id), "point") for r in past], limit, points)


def estimate_classify(store: Store, model: str, modes: tuple[str, ...], points_per_mode: int) -> float | None:
    """A classification curve: each mode's points at that mode's median measured seconds a point."""
    past = [p for r in _done(store, "classify", model) for p in of_kind(store.events(r.id), "point")]
    total = 0.0
    for mode in modes:
        per_point = _median([p.get("train_seconds", 0.0) + p.get("eval_seconds", 0.0) for p in past if p.get("mode") == mode])
        if per_point is None:
            return None
        total += per_point * points_per_mode
    return total


def estimate_similarity(store: Store, model: str, samples: int, seq_len: int) -> float | None:
    past = [(r.updated - r.created, r.settings["samples"] * r.settings["seq_len"]) for r in _done(store, "similarity", model)]
    return rate_estimate(past, samples * seq_len)


def estimate_brute_force(store: Store, model: str, blocks: int, samples: int, seq_len: int) -> float | None:
    past = [(r.updated - r.created, len(r.result["loss_increase"]) * r.settings["samples"] * r.settings["seq_len"])
            for r in _done(store, "brute-force", model) if r.result]
    return rate_estimate(past, blocks * samples * seq_len)

"""A sweep's points as the store keeps them: keys, curve names, one-line descriptions, where each
curve first reaches chance, and the points an earlier sweep with the same settings finished."""

from __future__ import annotations

import math

from explorer.evaluation.agreement import describe
from explorer.evaluation.evaluate import normalized_loss
from explorer.experiments.sweep.settings import Key, SweepSettings


def point_repair(point: dict) -> str:
    """'none', 'linear' or 'lora'; a point stored before repair was an axis has only "healed"."""
    return point.get("repair") or ("lora" if point.get("healed") else "none")


def point_key(point: dict) -> Key:
    return point["strategy"], int(point["n"]), point_repair(point)


def curve_name(strategy: str, repair: str) -> str:
    """'similarity', 'similarity healed' (LoRA) or 'similarity linear' (linear repair)."""
    return {"none": strategy, "lora": f"{strategy} healed"}.get(repair, f"{strategy} {repair}")


def describe_point(point: dict) -> str:
    """One line per point, e.g. 'simple n=6 (20%): accuracy 0.50 [0.22, 0.78], loss 4.357 ± 0.040 (normalized
    0.081), same answer as the unpruned model on 62% [50%, 73%]', then the generation task's accuracy
    and the continuations' repetition rate when the sweep measures them."""
    normalized = point.get("normalized_loss")
    return (
        f"{curve_name(point['strategy'], point_repair(point))} n={point['n']} ({point['fraction']:.0%}): "
        f"accuracy {point['accuracy']:.2f} [{point['ci_low']:.2f}, {point['ci_high']:.2f}], loss {point['val_loss']:.3f}"
        + (f" ± {point['val_loss_se']:.3f}" if point.get("val_loss_se") is not None else "")
        + (f" (normalized {normalized:.3f})" if normalized is not None else "")
        + describe(point)
        + (f"; by generation ({point['gen_task']}) {point['gen_accuracy']:.2f} [{point['gen_ci_low']:.2f}, "
           f"{point['gen_ci_high']:.2f}]" if point.get("gen_accuracy") is not None else "")
        + (f"; 4-gram repetition {point['repetition_4']:.2f}" if point.get("repetition_4") is not None else "")
    )


def first_at_chance(points: list[dict], strategy: str, repair: str = "none", prefix: str = "") -> dict | None:
    """The smallest-n point of a curve whose 95% interval reaches chance (contains it or lies below):
    where accuracy has fallen to random guessing. `prefix` "gen_": the generation task's curve, whose
    chance is 0, so its floor is the first point where the model writes no right answer."""
    curve = sorted((p for p in points if p["strategy"] == strategy and point_repair(p) == repair
                    and p.get(f"{prefix}ci_low") is not None), key=lambda p: p["n"])
    return next((p for p in curve if p[f"{prefix}ci_low"] <= p[f"{prefix}chance"]), None)


def repair_verdicts(points: list[dict]) -> list[dict]:
    """For every point measured with and without a linear repair: the held-out loss on the sweep's own
    text before and after the repair, and whether the repair made it worse (the repair is fitted on
    calibration documents, and a map that helps one kind of text can hurt another)."""
    pruned = {(p["strategy"], p["n"]): p for p in points if point_repair(p) == "none"}
    verdicts = []
    for point in sorted((p for p in points if point_repair(p) == "linear" and p["n"]), key=lambda p: (p["strategy"], p["n"])):
        if (before := pruned.get((point["strategy"], point["n"]))) is not None:
            verdicts.append({"strategy": point["strategy"], "n": point["n"], "fraction": point["fraction"],
                             "start": point["start"], "pruned_loss": before["val_loss"], "repaired_loss": point["val_loss"],
                             "hurts": point["val_loss"] > before["val_loss"]})
    return verdicts


def describe_verdict(verdict: dict) -> str:
    """'similarity n=6 (20%): the linear repair made the held-out loss worse, 4.180 -> 4.300' (or lowered it)."""
    change = "made the held-out loss worse" if verdict["hurts"] else "lowered the held-out loss"
    return (f"{verdict['strategy']} n={verdict['n']} ({verdict['fraction']:.0%}, layers from {verdict['start']}): the linear "
            f"repair {change}, {verdict['pruned_loss']:.3f} -> {verdict['repaired_loss']:.3f}")


def summary(points: list[dict]) -> dict:
    """The run's result: points and, per curve, the fraction where accuracy first reaches chance (and
    where the generation task's accuracy first reaches its floor), and the linear repairs' verdicts."""
    chance, generated = {}, {}
    for strategy, repair in sorted({(p["strategy"], point_repair(p)) for p in points}):
        hit = first_at_chance(points, strategy, repair)
        chance[curve_name(strategy, repair)] = hit["fraction"] if hit else None
        if any(p.get("gen_accuracy") is not None for p in points):
            hit = first_at_chance(points, strategy, repair, "gen_")
            generated[curve_name(strategy, repair)] = hit["fraction"] if hit else None
    return {"points": sorted(points, key=lambda p: (p["strategy"], p["healed"], point_repair(p), p["n"])),
            "first_at_chance": chance, "gen_first_at_chance": generated, "repair_verdicts": repair_verdicts(points)}


def sweep_points(store, run_id: int) -> list[dict]:
    """The point events of a sweep run (what the page plots while it runs)."""
    return [e for e in store.events(run_id) if e.get("kind") == "point"]


def reusable_points(store, run_id: int, settings: SweepSettings, fingerprint: str) -> dict[Key, dict]:
    """Points of this run and of every sweep run with the same settings, for the same weights."""
    wanted = settings.to_json()
    found: dict[Key, dict] = {}
    for run in store.list_runs(kind="sweep"):
        if run.id != run_id and SweepSettings.from_json(run.settings).to_json() != wanted:
            continue
        for point in sweep_points(store, run.id):
            if point.get("fingerprint") == fingerprint:
                found.setdefault(point_key(point), {**point, "run_id": run.id})
    return found


def normalized(loss: float, base_loss: float, vocab_size: int) -> float | None:
    """evaluate.normalized_loss, or None when the unpruned model is no better than uniform guessing
    (a random-weight model): the scale is undefined then, but accuracy and raw loss still are."""
    return normalized_loss(loss, base_loss, vocab_size) if base_loss < math.log(vocab_size) else None


def normalized_se(se: float | None, base_loss: float, vocab_size: int) -> float | None:
    """The loss's standard error on the normalized scale (the same affine map, without the shift)."""
    return se / (math.log(vocab_size) - base_loss) if se is not None and base_loss < math.log(vocab_size) else None

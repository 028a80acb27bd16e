"""Comparing two runs: only differing settings (nested ones flattened), both runs' curves."""

from __future__ import annotations

from explorer.compare import comparison_figure, flat_settings, settings_differences


def _heal_events(losses: list[float], accuracies: list[float]) -> list[dict]:
    events = [{"kind": "train", "step": s, "train_loss": loss} for s, loss in enumerate(losses, 1)]
    events += [{"kind": "eval", "step": 10 * i, "val_loss": 5.0 - i, "accuracy": a, "ci_low": a - 0.1, "ci_high": a + 0.1}
               for i, a in enumerate(accuracies)]
    return events


def test_flat_settings_and_only_differences(store):
    a = store.get_run(store.create_run("heal", "m", {"start": 3, "n": 2, "heal": {"rank": 8, "lr": 3e-4, "eval_options": {}}}))
    b = store.get_run(store.create_run("heal", "m", {"start": 3, "n": 2, "heal": {"rank": 2, "lr": 3e-4, "seed": 1}}))
    assert flat_settings(a.settings) == {"start": "3", "n": "2", "heal.rank": "8", "heal.lr": "0.0003", "heal.eval_options": "{}"}
    diff = settings_differences(a, b)
    assert diff.to_dict("records") == [
        {"setting": "heal.rank", f"#{a.id}": "8", f"#{b.id}": "2"},
        {"setting": "heal.eval_options", f"#{a.id}": "{}", f"#{b.id}": "—"},
        {"setting": "heal.seed", f"#{a.id}": "—", f"#{b.id}": "1"},
    ]
    assert settings_differences(a, a).empty


def test_two_heals_share_axes(store):
    a = store.get_run(store.create_run("heal", "m", {"heal": {"rank": 8}}))
    b = store.get_run(store.create_run("heal", "m", {"heal": {"rank": 2}}))
    fig = comparison_figure(a, _heal_events([3.0, 2.5], [0.5, 0.7]), b, _heal_events([3.1, 2.9, 2.7], [0.4, 0.45]))
    by_name = {trace.name: trace for trace in fig.data}
    assert list(by_name[f"#{a.id} accuracy"].y) == [0.5, 0.7]
    assert list(by_name[f"#{b.id} train loss"].y) == [3.1, 2.9, 2.7]
    assert by_name[f"#{a.id} accuracy"].xaxis == by_name[f"#{b.id} accuracy"].xaxis  # one subplot, shared axes
    sweep = store.get_run(store.create_run("sweep", "m", {}))
    assert comparison_figure(a, [], sweep, []) is None  # different kinds: nothing to overlay


def test_two_sweeps_one_line_per_run_and_strategy(store):
    a = store.get_run(store.create_run("sweep", "m", {"limit": 8}))
    b = store.get_run(store.create_run("sweep", "m", {"limit": 16}))
    point = lambda s, n, acc: {"kind": "point", "strategy": s, "n": n, "fraction": n / 10, "healed": False, "accuracy": acc, "val_loss": 3 + n}
    fig = comparison_figure(a, [point("simple", 0, 0.8), point("simple", 3, 0.4)], b,
                            [point("simple", 0, 0.9), point("similarity", 0, 0.9), point("similarity", 3, 0.6)])
    names = sorted(t.name for t in fig.data if t.name.endswith("accuracy"))
    assert names == [f"#{a.id} simple accuracy", f"#{b.id} similarity accuracy", f"#{b.id} simple accuracy"]

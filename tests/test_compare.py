"""Comparing two runs: only differing settings (nested ones flattened); their curves are in test_figures."""

from __future__ import annotations

from explorer.views.compare import flat_settings, settings_differences


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

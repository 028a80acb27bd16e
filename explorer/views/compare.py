"""Two runs side by side: the settings that differ (their curves: `explorer.views.figures.runs`).

What the Runs page shows when a second run is picked. A heal run's settings nest the LoRA
config one level down (`heal.rank`), so settings are flattened to dotted keys before they are
compared: one flat table of only the differing keys, instead of two truncated dicts.
"""

from __future__ import annotations

import json

import pandas as pd

from explorer.state.store import Run


def flat_settings(settings: dict, prefix: str = "") -> dict[str, str]:
    """{'heal': {'rank': 8}} -> {'heal.rank': '8'}; lists and scalars as JSON text."""
    flat: dict[str, str] = {}
    for key, value in settings.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flat_settings(value, f"{name}."))
        else:
            flat[name] = value if isinstance(value, str) else json.dumps(value)
    return flat


def settings_differences(a: Run, b: Run) -> pd.DataFrame:
    """One row per setting whose value differs (or exists in one run only), in first-seen order."""
    left, right = flat_settings(a.settings), flat_settings(b.settings)
    keys = [k for k in dict.fromkeys([*left, *right]) if left.get(k) != right.get(k)]
    return pd.DataFrame(
        {"setting": keys, f"#{a.id}": [left.get(k, "—") for k in keys], f"#{b.id}": [right.get(k, "—") for k in keys]}
    )

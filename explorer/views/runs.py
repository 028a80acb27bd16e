"""What the Runs page shows and exports for any run in the store, whatever its kind.

Pure functions of a `Run` and its events, so the page only draws them and tests check them
without Streamlit: a one-line summary of the key settings, each kind's headline and table (the
run-kind registry, explorer.kinds, picks them: distances for a similarity run, points for a sweep,
scores for a metric run, events for training-like runs), the full JSON, and the saved model
folder / mergekit YAML.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from datetime import datetime
from pathlib import Path

import pandas as pd

from explorer.analysis.bootstrap import bootstrap
from explorer.analysis.metrics import MetricScores
from explorer.analysis.similarity import SimilarityResult
from explorer.core.errors import ExplorerError
from explorer.core.policy import Policy, check_delete
from explorer.evaluation.agreement import describe
from explorer.export.mergekit import mergekit_yaml
from explorer.export.folder import recorded_layers
from explorer.lm.blocks import default_size
from explorer.lm.data import C4, EMBEDDED
from explorer.state.files import log_path, run_folder
from explorer.state.store import ACTIVE, Run, Store, of_kind
from explorer.views.figures.metrics import metrics_frame as scores_frame
from explorer.views.figures.similarity import distances_frame
from explorer.views.figures.sweep import points_frame

SETTINGS_SHOWN = 5


def settings_summary(run: Run) -> str:
    """The first few settings as 'key=value', skipping empty ones."""
    shown = [(k, v) for k, v in run.settings.items() if v not in (None, "", [], {}, False)]
    text = ", ".join(f"{k}={json.dumps(v) if isinstance(v, (list, dict)) else v}" for k, v in shown[:SETTINGS_SHOWN])
    return text + (", …" if len(shown) > SETTINGS_SHOWN else "")


def _accuracy(data: dict) -> str:
    return f"accuracy {data['accuracy']:.2f} [{data['ci_low']:.2f}, {data['ci_high']:.2f}]"


def similarity_headline(run: Run) -> str | None:
    if not run.result.get("distances"):
        return None
    similarity = SimilarityResult.from_json(run.result)  # older runs stored an unrestricted "optimal": recomputed
    best = similarity.best_block(default_size(similarity.num_layers))
    return f"n={best.n}: best block from layer {best.start} (d={similarity.distances[best.n - 1][best.start]:.3f})"


def sweep_headline(run: Run) -> str | None:
    if "first_at_chance" not in run.result:
        return None
    parts = [f"{curve} {'—' if f is None else f'{f:.0%}'}" for curve, f in run.result["first_at_chance"].items()]
    return f"{len(run.result['points'])} points; at chance from: " + ", ".join(parts)


def metrics_headline(run: Run) -> str:
    return f"{run.result['num_layers']} layers, {run.result['tokens']} tokens scored"


def brute_force_headline(run: Run) -> str:
    increase = run.result["loss_increase"]
    best = min(range(len(increase)), key=increase.__getitem__)
    return f"n={run.result['n']}: smallest loss increase {increase[best]:.3f} at layer {best}"


def sublayers_headline(run: Run) -> str:
    """The attention and the MLP sub-layer that change the stream least (lowest Block Influence)."""
    result = run.result
    lowest = {kind: min(range(result["num_layers"]), key=result[f"{kind}_influence"].__getitem__) for kind in ("attention", "mlp")}
    return f"least-changing sub-layers: attention of layer {lowest['attention']}, MLP of layer {lowest['mlp']}"


def selection_headline(run: Run) -> str:
    """An iterative strategy's first removals and how long choosing took."""
    order = run.result["order"]
    return (f"{run.result['strategy']} removes {', '.join(map(str, order[:5]))}{', ...' if len(order) > 5 else ''} "
            f"(chosen in {run.result['seconds']:.0f} s)")


def heal_headline(run: Run) -> str | None:
    healed = (run.result.get("metrics") or {}).get("healed")
    return "healed " + _accuracy(healed) + describe(healed) if healed and "accuracy" in healed else None


def result_headline(result: dict) -> str:
    """A result without a kind of its own: its accuracy, the block it removed, or its numbers."""
    if "accuracy" in result:
        return _accuracy(result) + describe(result)
    if block := result.get("block"):
        return f"removed layers {block['start']}-{block['start'] + block['n'] - 1} of {block['num_layers']}"
    return ", ".join(f"{k}={v}" for k, v in result.items() if isinstance(v, (int, float, str)))[:120] or "done"


def similarity_table(run: Run, events: list[dict]) -> pd.DataFrame | None:
    if not (run.result or {}).get("distances"):
        return None
    similarity = SimilarityResult.from_json(run.result)
    return distances_frame(similarity, bootstrap(similarity))


def sweep_table(run: Run, events: list[dict]) -> pd.DataFrame:
    return points_frame(of_kind(events, "point"))


def metrics_table(run: Run, events: list[dict]) -> pd.DataFrame | None:
    if not run.result:
        return None
    scores = MetricScores.from_json(run.result)
    return pd.concat([scores_frame(scores, n) for n in range(1, scores.num_layers)], ignore_index=True)


def brute_force_table(run: Run, events: list[dict]) -> pd.DataFrame | None:
    if not run.result:
        return None
    return pd.DataFrame({"l": range(len(run.result["loss_increase"])), "n": run.result["n"],
                         "loss_increase": run.result["loss_increase"]})


def events_table(run: Run, events: list[dict]) -> pd.DataFrame:
    """Any run's events (or, without events, its result) flattened: the table of a kind without its own."""
    if events:
        # per-question predictions (explorer.evaluation.agreement) would become one column per question: left to the JSON
        return pd.json_normalize([{k: v for k, v in e.items() if not isinstance(v, list) and k != "predictions"}
                                  for e in events])
    return pd.json_normalize({k: v for k, v in (run.result or {}).items() if not isinstance(v, list)})


def run_json(run: Run, events: list[dict]) -> str:
    """Everything the store holds about the run, as one JSON document."""
    return json.dumps({**asdict(run), "events": events}, indent=1, default=str)


def model_folder(run: Run) -> Path | None:
    """The saved model folder of a prune/heal run, when it still exists on disk."""
    value = (run.result or {}).get("folder")
    return Path(value) if isinstance(value, str) and (Path(value) / "config.json").is_file() else None


def mergekit_text(run: Run) -> str | None:
    """The mergekit YAML saved beside the model, or rebuilt from the run's block and model id."""
    folder = model_folder(run)
    if folder and (folder / "mergekit.yaml").is_file():
        return (folder / "mergekit.yaml").read_text()
    result = run.result or {}
    block, model_id = result.get("block"), result.get("model") or run.settings.get("model") or run.settings.get("source")
    if isinstance(block, dict) and isinstance(model_id, str) and {"start", "n", "num_layers"} <= set(block):
        return mergekit_yaml(model_id, block["num_layers"], recorded_layers(block))
    return None


def heal_description(settings: dict) -> str:
    """The settings of a heal job in one line, as the Prune & heal page says which run it shows."""
    h, start, n = settings["heal"], settings["start"], settings["n"]
    saved = f"saving the model ({settings.get('dtype') or 'as loaded'})" if settings.get("save") else "not saving the model"
    return (f"layers {start}-{start + n - 1} removed · {h['steps']} steps of {h['batch_size']} × {h['seq_len']} tokens · "
            f"LoRA rank {h['rank']}, alpha {h['alpha']}, lr {h['lr']:g} · {h.get('eval_task') or 'default task'}, "
            f"{h['eval_limit']} questions every {h['eval_every']} steps · {saved}")


def run_files(store, run: Run) -> list[Path]:
    """The files a run left on disk: its job folder (runs/<id>/), its job log and a saved model
    folder its result names; only those that exist."""
    candidates = [run_folder(store, run.id), log_path(store, run.id), model_folder(run)]
    return list(dict.fromkeys(p for p in candidates if p is not None and p.exists()))


def disk_usage(path: Path) -> int:
    """Bytes in a file, or in every file under a folder (links are not followed, so nothing counts twice)."""
    if path.is_symlink() or path.is_file():
        return path.lstat().st_size
    return sum(f.lstat().st_size for f in path.rglob("*") if f.is_symlink() or f.is_file())


def format_bytes(size: int) -> str:
    """'0 B', '812 kB', '436 MB', '1.2 GB' (decimal units, like `du --si`)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}" if size < 10 * scale else f"{size / scale:.0f} {unit}"
    return f"{size} B"


def delete_run(store: Store, run: Run, policy: Policy, files: list[Path]) -> int:
    """Delete a finished run and these of its files (see `run_files`); returns the bytes freed.
    The operator's switch is enforced here, not only by the page hiding its button: a request
    built by hand is refused too. A queued or running job must be cancelled first."""
    check_delete(policy)
    if run.status in ACTIVE:
        raise ExplorerError(f"Run #{run.id} is still {run.status}: cancel it before deleting it.")
    store.delete_run(run.id)
    return delete_files(files)


def delete_files(paths: list[Path]) -> int:
    """Delete these files and folders; returns the bytes freed."""
    freed = 0
    for path in paths:
        freed += disk_usage(path)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    return freed


def sweep_description(settings) -> str:
    """A sweep's SweepSettings in one line, as the Sweep page says which run it shows."""
    sizes = f"fractions {', '.join(f'{f:g}' for f in settings.fractions)}" if settings.fractions else f"every {settings.stride}. n"
    healing = f"{settings.heal_steps} healing steps per point" if settings.heal_steps else "no healing"
    return (f"{', '.join(settings.strategies)} · {sizes} · {settings.task}, {settings.limit} questions per point · "
            f"{settings.sim_samples} × {settings.seq_len}-token heatmap samples · {healing}")


def source_name(source: str) -> str:
    """A text source as the pages name it: 'embedded', 'c4' or the file's name (not its server path)."""
    return source if source in (EMBEDDED, C4) else Path(source).name


def similarity_label(run: Run) -> str:
    """A saved similarity run in one line, for the page's picker of saved runs."""
    s = run.settings
    when = datetime.fromtimestamp(run.updated).strftime("%Y-%m-%d %H:%M")
    return f"#{run.id} · {source_name(s['source'])} · {s['samples']} × {s['seq_len']} tokens · {when}"


def similarity_caption(run_id: int, model: str, num_layers: int, from_cache: bool, settings: dict) -> str:
    """Which similarity run the page shows, on what text, and whether it came from the store."""
    origin = f"loaded from cache (run #{run_id})" if from_cache else f"computed now (run #{run_id})"
    return (f"Showing similarity run #{run_id}: {model} · {num_layers} layers · {source_name(settings['source'])} "
            f"text, {settings['samples']} samples × {settings['seq_len']} tokens · {origin}")


def sweep_label(run: Run) -> str:
    """A saved sweep in one line, for the Sweep page's picker."""
    return f"#{run.id} · {run.status} · {run.settings.get('task')}"

"""What the Runs page shows and exports for any run in the store, whatever its kind.

Pure functions of a `Run` and its events, so the page only draws them and tests check them
without Streamlit: a one-line summary of the key settings, each kind's headline and table (the
run-kind registry, explorer.kinds, picks them: distances for a similarity run, points for a sweep,
scores for a metric run, events for training-like runs), the full JSON, and the saved model
folder / mergekit YAML.
"""

from __future__ import annotations

import json
import re
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
from explorer.evaluation.accuracy import generation_part, with_n
from explorer.evaluation.agreement import describe
from explorer.export.folder import changes
from explorer.export.mergekit import mergekit_yaml
from explorer.lm.blocks import default_size, recorded_layers
from explorer.lm.data import C4, EMBEDDED
from explorer.lm.save import RECORD_FILE, written_files
from explorer.state.files import log_path, run_folder
from explorer.state.store import ACTIVE, Run, Store, of_kind
from explorer.views.figures.metrics import metrics_frame as scores_frame
from explorer.views.figures.similarity import distances_frame
from explorer.views.figures.sweep import points_frame

SETTINGS_SHOWN = 5


_PATH_IN_TEXT = re.compile(r"(?<![\w.:/~])~?/(?:[^\s'\"`,;()/]+/)+([^\s'\"`,;()/]+)")  # /a/b/name, ~/a/name; not URLs


def hide_paths(value):
    """A setting with every server path in it reduced to its file name (nested dicts and lists too,
    and paths inside a text such as an error message): what a visitor of a served room is shown of
    other runs (an upload's path names the server's folders; its name is what the visitor chose)."""
    if isinstance(value, dict):
        return {key: hide_paths(item) for key, item in value.items()}
    if isinstance(value, list):
        return [hide_paths(item) for item in value]
    if not isinstance(value, str):
        return value
    if ("/" in value or "\\" in value) and (value.startswith(("/", "~", ".")) or Path(value).expanduser().exists()):
        return Path(value.replace("\\", "/")).name
    return _PATH_IN_TEXT.sub(r"\1", value)


def shown_settings(run: Run, paths: bool) -> dict:
    """The run's settings as a page shows them: whole for the operator, paths hidden otherwise."""
    return run.settings if paths else hide_paths(run.settings)


def settings_summary(run: Run, paths: bool = True) -> str:
    """The first few settings as 'key=value', skipping empty ones (server paths hidden unless `paths`)."""
    shown = [(k, v) for k, v in shown_settings(run, paths).items() if v not in (None, "", [], {}, False)]
    text = ", ".join(f"{k}={json.dumps(v) if isinstance(v, (list, dict)) else v}" for k, v in shown[:SETTINGS_SHOWN])
    return text + (", …" if len(shown) > SETTINGS_SHOWN else "")


def _accuracy(data: dict) -> str:
    """'accuracy 0.43 [0.38, 0.48], n = 64', and the generation task's beside it when measured."""
    text = with_n(f"accuracy {data['accuracy']:.2f} [{data['ci_low']:.2f}, {data['ci_high']:.2f}]", data)
    if data.get("gen_accuracy") is not None:
        gen = generation_part(data)
        text += ", by generation " + with_n(f"{gen['accuracy']:.2f} [{gen['ci_low']:.2f}, {gen['ci_high']:.2f}]", gen)
    return text


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
    floors = [f"{curve} {'—' if f is None else f'{f:.0%}'}" for curve, f in run.result.get("gen_first_at_chance", {}).items()]
    hurt = sum(v["hurts"] for v in run.result.get("repair_verdicts", []))
    return (f"{len(run.result['points'])} points; at chance from: " + ", ".join(parts)
            + ("; by generation at its floor from: " + ", ".join(floors) if floors else "")
            + (f"; the linear repair raised the held-out loss at {hurt} points" if hurt else ""))


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


def run_json(run: Run, events: list[dict], paths: bool = True) -> str:
    """Everything the store holds about the run, as one JSON document; never its owner's visitor key
    (it is what lets that session cancel the run), and server paths hidden unless `paths`."""
    data = {key: value for key, value in asdict(run).items() if key != "owner"}
    return json.dumps(hide_paths({**data, "events": events}) if not paths else {**data, "events": events},
                      indent=1, default=str)


def model_folder(run: Run) -> Path | None:
    """The saved model folder of a prune/heal run, when it still exists on disk."""
    value = (run.result or {}).get("folder")
    return Path(value) if isinstance(value, str) and (Path(value) / "config.json").is_file() else None


def mergekit_text(run: Run) -> str | None:
    """The mergekit YAML saved beside the model, or rebuilt from the run's block and model id
    (labelled when the run repaired or healed the model: the YAML rebuilds only the unrepaired slice)."""
    folder = model_folder(run)
    if folder and (folder / "mergekit.yaml").is_file():
        return (folder / "mergekit.yaml").read_text()
    result = run.result or {}
    block, model_id = result.get("block"), result.get("model") or run.settings.get("model") or run.settings.get("source")
    if isinstance(model_id, dict):  # a heal job's settings hold the model as {"source", "device", ...}
        model_id = model_id.get("source")
    if isinstance(block, dict) and isinstance(model_id, str) and {"start", "n", "num_layers"} <= set(block):
        record = {**result, "kind": run.kind}
        return mergekit_yaml(model_id, block["num_layers"], recorded_layers(block), changed=changes(record))
    return None


def heal_description(settings: dict) -> str:
    """The settings of a heal job in one line, as the Prune & heal page says which run it shows."""
    h, start, n = settings["heal"], settings["start"], settings["n"]
    saved = f"saving the model ({settings.get('dtype') or 'as loaded'})" if settings.get("save") else "not saving the model"
    trains = (f"last {h.get('last_layers', 3)} layers + LM head, lr {h['lr']:g}" if h.get("targets") == "last-layers"
              else f"LoRA rank {h['rank']}, alpha {h['alpha']}, lr {h['lr']:g}")
    objective = {"nll": "", "kl": f" · distilled (KL, T {h.get('temperature', 1.0):g})",
                 "nll+kl": f" · NLL + {h.get('kl_weight', 0.5):g} KL (T {h.get('temperature', 1.0):g})"}[h.get("objective", "nll")]
    data = " · on the unpruned model's own text" if h.get("data") == "self" else ""
    return (f"layers {start}-{start + n - 1} removed · {h['steps']} steps of {h['batch_size']} × {h['seq_len']} tokens · "
            f"{trains}{objective}{data} · {h.get('eval_task') or 'default task'}, "
            f"{h['eval_limit']} questions every {h['eval_every']} steps · {saved}")


def run_files(store, run: Run) -> list[Path]:
    """The files the run wrote, those that still exist: its job folder (runs/<id>/, its own), its
    job log, and of a model folder elsewhere (a CLI heal's --out) only the files its run.json says
    were written there, never what else that folder holds (nothing, when the list is unknown)."""
    own = run_folder(store, run.id)
    candidates = [own, log_path(store, run.id)]
    folder = model_folder(run)
    if folder is not None and not folder.resolve().is_relative_to(own.resolve()):
        candidates += written_files(folder) or []
    return list(dict.fromkeys(p for p in candidates if p.exists()))


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


def delete_run(store: Store, run: Run, policy: Policy, files: list[Path], visitor: str | None = None) -> int:
    """Delete a finished run and these of its files (see `run_files`); returns the bytes freed.
    The operator's switch, and that a visitor deletes only their own runs, are enforced here, not
    only by the page hiding its button: a request built by hand is refused too. A queued or
    running job must be cancelled first."""
    check_delete(policy, run.owner, visitor)
    if run.status in ACTIVE:
        raise ExplorerError(f"Run #{run.id} is still {run.status}: cancel it before deleting it.")
    store.delete_run(run.id)
    return delete_files(files)


def delete_files(paths: list[Path]) -> int:
    """Delete these files and folders, then a model folder left empty (its run.json was deleted
    with every other file it held); returns the bytes freed."""
    freed = 0
    for path in paths:
        freed += disk_usage(path)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    for parent in {path.parent for path in paths if path.name == RECORD_FILE}:
        if parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()
    return freed


def sweep_description(settings) -> str:
    """A sweep's SweepSettings in one line, as the Sweep page says which run it shows."""
    sizes = f"fractions {', '.join(f'{f:g}' for f in settings.fractions)}" if settings.fractions else f"every {settings.stride}. n"
    healing = f"{settings.heal_steps} healing steps per point" if settings.heal_steps else "no healing"
    return (f"{', '.join(settings.strategies)} · {sizes} · {settings.task}, {settings.limit} questions per point · "
            f"{settings.sim_samples} × {settings.seq_len}-token heatmap samples · {healing}"
            + (" · speedup timed per point" if settings.speed else ""))


def source_name(source: str) -> str:
    """A text source as the pages name it: 'embedded', 'c4' or the file's name (not its server path)."""
    return source if source in (EMBEDDED, C4) else Path(source).name


def sample_count(used: int | None, asked: int) -> str:
    """'32 samples', or '2 samples (32 asked; the text has only 2 usable documents)': every caption
    states the samples really averaged over."""
    if used is None or used == asked:
        return f"{asked} samples"
    return f"{used} sample{'s' if used != 1 else ''} ({asked} asked; the text has only {used} usable document{'s' if used != 1 else ''})"


def similarity_label(run: Run) -> str:
    """A saved similarity run in one line, for the page's picker of saved runs."""
    s = run.settings
    when = datetime.fromtimestamp(run.updated).strftime("%Y-%m-%d %H:%M")
    used = (run.result or {}).get("samples")
    return f"#{run.id} · {source_name(s['source'])} · {used if used is not None else s['samples']} × {s['seq_len']} tokens · {when}"


def similarity_caption(run_id: int, model: str, num_layers: int, from_cache: bool, settings: dict,
                       used: int | None = None) -> str:
    """Which similarity run the page shows, on what text (with the samples really used), and
    whether it came from the store."""
    origin = f"loaded from cache (run #{run_id})" if from_cache else f"computed now (run #{run_id})"
    return (f"Showing similarity run #{run_id}: {model} · {num_layers} layers · {source_name(settings['source'])} "
            f"text, {sample_count(used, settings['samples'])} × {settings['seq_len']} tokens · {origin}")


def sweep_label(run: Run) -> str:
    """A saved sweep in one line, for the Sweep page's picker."""
    return f"#{run.id} · {run.status} · {run.settings.get('task')}"

"""Measurements kept in the run store: compute once, then fetch by key.

The state layer's one home for caching wrappers. The compute modules (similarity, metrics,
evaluate, heal, ...) are pure functions of a model and its inputs and never import the store;
each wrapper here keys one of them by the model's fingerprint and what its result depends on,
and `Store.cached` runs it at most once per key (concurrent callers wait for the first).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable

from explorer.analysis.metrics import MetricScores, brute_force_key, brute_force_losses, compute_scores
from explorer.analysis.similarity import Progress, SimilarityResult, compute_distances, distances_key, similarity_key
from explorer.analysis.strategies import DISTANCES, INFLUENCE, MODEL, SUBLAYERS, Context, get_strategy, needs_of, timed_order
from explorer.analysis.sublayers import SublayerScores, compute_sublayer_scores
from explorer.core.errors import ExplorerError
from explorer.evaluation.agreement import predictions
from explorer.evaluation.evaluate import Evaluated, quick_eval, run_task
from explorer.lm.data import make_samples, source_fingerprint
from explorer.lm.models import LoadedModel
from explorer.state.store import Run, Store
from explorer.surgery.distill import SelfData
from explorer.surgery.heal import HealConfig, self_data


def _calibration_run(kind: str, key: Callable[[LoadedModel, str], str], loaded: LoadedModel, source: str, samples: int,
                     seq_len: int, batch_size: int, store: Store | None, compute: Callable[[list[list[int]]], dict]):
    """(run id, result JSON, from_cache) of a one-pass measurement over calibration samples, keyed by
    the model and the samples' fingerprint (the batch size is kept but never changes the result)."""
    store = store or Store()
    data = make_samples(loaded.tokenizer, source, samples, seq_len)
    settings = {"source": source, "samples": samples, "seq_len": seq_len, "batch_size": batch_size}
    return store.cached(kind, key(loaded, data.fingerprint), loaded.name, settings, lambda: compute(data.ids))


def distances_run(store: Store, loaded: LoadedModel, source: str, samples: int, seq_len: int) -> Run | None:
    """The finished run `cached_distances` would return for these settings, or None: it would compute."""
    data = make_samples(loaded.tokenizer, source, samples, seq_len)
    return store.find_done("similarity", distances_key(loaded, data.fingerprint))


def cached_distances(loaded: LoadedModel, source: str, samples: int, seq_len: int, batch_size: int = 8,
                     store: Store | None = None, progress: Progress | None = None) -> tuple[int, SimilarityResult, bool]:
    """Compute (or fetch from the store) the distances; returns (run id, result, from_cache)."""
    run_id, result, hit = _calibration_run(
        "similarity", distances_key, loaded, source, samples, seq_len, batch_size, store,
        lambda ids: replace(compute_distances(loaded, ids, batch_size, progress), seq_len=seq_len, source=source).to_json(),
    )
    return run_id, SimilarityResult.from_json(result), hit


def heatmap_origin(result: SimilarityResult, where: str) -> str:
    """Which calibration chose a block, in words: 'run #4 (embedded text, 64 samples × 256 tokens)'."""
    text = Path(result.source).name if result.source not in (None, "embedded", "c4") else (result.source or "unknown")
    tokens = f" × {result.seq_len} tokens" if result.seq_len else ""
    return f"{where} ({text} text, {result.samples} samples{tokens})"


def stored_heatmap(spec: str, store: Store) -> tuple[SimilarityResult, str]:
    """A heatmap to reuse, named by a similarity run id or a JSON file `similarity --out` wrote;
    returns it and its origin in words (heatmap_origin)."""
    if spec.strip().isdigit():
        run = store.get_run(int(spec))
        if run.kind != "similarity" or run.status != "done" or not run.result:
            raise ExplorerError(f"Run {spec} is a {run.status} {run.kind} run, not a finished similarity heatmap.")
        return SimilarityResult.from_json(run.result), heatmap_origin(SimilarityResult.from_json(run.result), f"run #{run.id}")
    path = Path(spec).expanduser()
    try:
        result = SimilarityResult.from_json(json.loads(path.read_text()))
    except OSError as exc:
        raise ExplorerError(f"Cannot read the heatmap {path} ({exc.strerror or exc}): give a similarity run id or the "
                            "JSON file `similarity --out` wrote.") from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise ExplorerError(f"{path.name} is not a similarity heatmap (the JSON `similarity --out` writes): "
                            f"{type(exc).__name__}.") from exc
    return result, heatmap_origin(result, path.name)


def cached_scores(loaded: LoadedModel, source: str, samples: int, seq_len: int, batch_size: int = 8,
                  store: Store | None = None, progress: Progress | None = None) -> tuple[int, MetricScores, bool]:
    """The one-pass metrics for these settings, as a 'metrics' run; returns (run id, scores, from_cache)."""
    run_id, result, hit = _calibration_run(
        "metrics", similarity_key, loaded, source, samples, seq_len, batch_size, store,
        lambda ids: compute_scores(loaded, ids, batch_size, progress).to_json(),
    )
    return run_id, MetricScores.from_json(result), hit


def sublayers_run(store: Store, loaded: LoadedModel, source: str, samples: int, seq_len: int) -> Run | None:
    """The finished run `cached_sublayers` would return for these settings, or None: it would compute."""
    return store.find_done("sublayers", similarity_key(loaded, make_samples(loaded.tokenizer, source, samples, seq_len).fingerprint))


def cached_sublayers(loaded: LoadedModel, source: str, samples: int, seq_len: int, batch_size: int = 8,
                     store: Store | None = None, progress: Progress | None = None) -> tuple[int, SublayerScores, bool]:
    """Every attention and MLP sub-layer's scores (analysis.sublayers) as a 'sublayers' run."""
    run_id, result, hit = _calibration_run(
        "sublayers", similarity_key, loaded, source, samples, seq_len, batch_size, store,
        lambda ids: compute_sublayer_scores(loaded, ids, batch_size, progress).to_json(),
    )
    return run_id, SublayerScores.from_json(result), hit


def cached_order(loaded: LoadedModel, strategy: str, source: str, samples: int, seq_len: int, batch_size: int = 8,
                 store: Store | None = None, progress: Progress | None = None) -> tuple[int, dict, bool]:
    """An iterative strategy's whole removal order (and the seconds it took) as a 'selection' run
    keyed by the model, the calibration samples and the strategy: every n of every sweep reuses it."""
    chosen = get_strategy(strategy)
    return _calibration_run(
        "selection", lambda model, samples_key: f"{similarity_key(model, samples_key)}|{strategy}", loaded, source,
        samples, seq_len, batch_size, store, lambda ids: timed_order(chosen, loaded, ids, batch_size, progress),
    )


def strategy_context(loaded: LoadedModel, strategies: list[str] | tuple[str, ...], source: str, samples: int,
                     seq_len: int, batch_size: int = 8, store: Store | None = None,
                     phase: Callable[[str], None] = lambda text: None) -> Context:
    """What the named strategies need to choose on `loaded`, each computed once on the calibration
    text (`samples` documents of `seq_len` tokens) or fetched from the store; `phase` hears of each."""
    needs = needs_of(strategies)
    context = Context(loaded.num_layers)
    if DISTANCES in needs:
        phase("angular distances (the similarity heatmap)")
        context.similarity = cached_distances(loaded, source, samples, seq_len, batch_size, store)[1]
    if INFLUENCE in needs:
        phase("Block Influence of every layer")
        context.influence = cached_scores(loaded, source, samples, seq_len, batch_size, store)[1].layer_influence
    if SUBLAYERS in needs:
        phase("Block Influence of every attention and MLP sub-layer")
        context.sublayers = cached_sublayers(loaded, source, samples, seq_len, batch_size, store)[1]
    for name in strategies:
        if MODEL in get_strategy(name).needs:
            phase(f"{name}: choosing layer by layer (computed once per model and text)")
            context.orders[name] = cached_order(loaded, name, source, samples, seq_len, batch_size, store)[1]["order"]
    return context


def brute_force_run(store: Store, loaded: LoadedModel, n: int, source: str, samples: int, seq_len: int) -> Run | None:
    """The finished run `cached_brute_force` would return for these settings, or None: it would measure."""
    return store.find_done("brute-force", brute_force_key(loaded, n, source, samples, seq_len))


def cached_brute_force(loaded: LoadedModel, n: int, source: str, samples: int, seq_len: int, batch_size: int = 8,
                       store: Store | None = None, progress: Progress | None = None) -> tuple[int, dict, bool]:
    """brute_force_losses as a 'brute-force' run keyed by model, held-out text and n."""
    store = store or Store()
    settings = {"source": source, "samples": samples, "seq_len": seq_len, "batch_size": batch_size, "n": n}
    return store.cached(
        "brute-force", brute_force_key(loaded, n, source, samples, seq_len), loaded.name, settings,
        lambda: brute_force_losses(loaded, n, source, samples, seq_len, batch_size, progress),
    )


def cached_quick_eval(loaded: LoadedModel, config: Evaluated, store: Store | None = None) -> dict:
    """quick_eval stored as a "quick-eval" run keyed by the model's fingerprint and the evaluation
    settings, so the unpruned model's "before pruning" numbers are computed once and shared by
    the page, every heal job and the CLI (evaluation is deterministic). No store: just compute."""
    evaluation = config.evaluation()
    if store is None:
        return quick_eval(loaded, evaluation)
    settings = asdict(evaluation)
    digest = json.dumps({**settings, "source": source_fingerprint(config.source)}, sort_keys=True, default=str)
    key = f"{loaded.fingerprint}|{hashlib.sha1(digest.encode()).hexdigest()[:16]}"
    return store.cached("quick-eval", key, loaded.name, settings, lambda: quick_eval(loaded, evaluation))[1]


def cached_reference(loaded: LoadedModel, task: str, limit: int | None, batch_size: int, options: dict,
                     store: Store) -> dict[str, str]:
    """The unpruned model's predictions on a task, computed once and kept as a
    "reference-predictions" run keyed by its fingerprint and the task settings (explorer.evaluation.agreement)."""
    settings = {"task": task, "limit": limit, "options": options}
    digest = hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]
    compute = lambda: {"predictions": predictions(run_task(loaded, task, limit, batch_size, **options).per_question)}  # noqa: E731
    return store.cached("reference-predictions", f"{loaded.fingerprint}|{digest}", loaded.name, settings, compute)[1][
        "predictions"]


def self_data_key(loaded: LoadedModel, config: HealConfig) -> tuple[str, dict]:
    """The store key and settings of a model's self data for a heal: what the text is (the training
    documents' fingerprint: source, split, count, length) and how it is continued (prompt length,
    sequence length, greedy decoding). The batch size is left out: equal-length prompts share a
    batch unpadded, so it cannot change a token."""
    documents = make_samples(loaded.tokenizer, config.source, config.train_samples or config.steps * config.batch_size,
                             config.seq_len, "train")
    settings = {"source": config.source, "documents": len(documents.ids), "seq_len": config.seq_len,
                "prompt_tokens": config.prompt_tokens, "decoding": "greedy"}
    digest = hashlib.sha1(json.dumps({**settings, "samples": documents.fingerprint}, sort_keys=True).encode()).hexdigest()[:16]
    return f"{loaded.fingerprint}|{digest}", settings


def cached_self_data(loaded: LoadedModel, config: HealConfig, store: Store | None = None) -> SelfData:
    """The unpruned model's greedy continuations of the training prompts (heal.self_data), kept as
    a "self-data" run keyed by the model's fingerprint and `self_data_key`, so a second heal of
    the same model and text reuses them. No store: just generate."""
    if store is None:
        return self_data(loaded, config)
    key, settings = self_data_key(loaded, config)
    run_id, result, _ = store.cached("self-data", key, loaded.name, settings, lambda: self_data(loaded, config).to_json())
    return SelfData.from_json(result, run_id)

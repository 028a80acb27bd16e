"""Many sessions on one shared model: threads (as Streamlit runs sessions) hitting the backend at once.

Without coordination two similarity passes on one model see each other's recording hooks
("Captured 2L+2 states for L layers") and identical requests each compute and store a run."""

from __future__ import annotations

import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import torch

from explorer.analysis.similarity import compute_distances
from explorer.core.concurrency import exclusive, model_lock
from explorer.lm.data import make_samples
from explorer.lm.generate import complete
from explorer.state.cache import cached_distances, cached_scores
from explorer.surgery.prune import prune_block

THREADS = 6


def at_once(calls: list) -> list:
    """Run every call in its own thread, all released together; results in order (errors re-raised)."""
    barrier = threading.Barrier(len(calls))

    def run(call):
        barrier.wait()
        return call()

    with ThreadPoolExecutor(len(calls)) as pool:
        return [f.result() for f in [pool.submit(run, c) for c in calls]]


def test_identical_requests_compute_once_and_all_get_the_result(tiny_llama, store):
    outcomes = at_once([lambda: cached_distances(tiny_llama, "embedded", 8, 64, 4, store=store)] * THREADS)
    runs = store.list_runs("similarity")
    assert len(runs) == 1 and runs[0].status == "done"
    assert {run_id for run_id, _, _ in outcomes} == {runs[0].id}
    assert sorted(hit for _, _, hit in outcomes) == [False] + [True] * (THREADS - 1)
    assert all(result.distances == outcomes[0][1].distances for _, result, _ in outcomes)


def recording_hooks(layer: torch.nn.Module) -> list:
    """Our recorders' hooks on a layer; transformers' own output-capturing hooks (installed for good
    by any forward with output_hidden_states) are not ours and are harmless."""
    hooks = [*layer._forward_hooks.values(), *layer._forward_pre_hooks.values()]
    return [hook for hook in hooks if getattr(hook, "__module__", "").startswith("explorer")]


def test_different_requests_on_one_model_never_mix(tiny_llama, store):
    """Different sample counts, the metrics pass, a pruned copy and a completion, all at once on one
    model object; each similarity result equals the same computation done alone."""
    sizes = [3, 4, 5, 6, 7]
    calls = [lambda s=s: cached_distances(tiny_llama, "embedded", s, 64, 2, store=store)[1] for s in sizes]
    calls += [lambda: cached_scores(tiny_llama, "embedded", 5, 64, 2, store=store)[1],
              lambda: prune_block(tiny_llama, 1, 2),
              lambda: complete(tiny_llama, "The capital of France is", 8)]
    outcomes = at_once(calls)
    for size, result in zip(sizes, outcomes):
        alone = compute_distances(tiny_llama, make_samples(tiny_llama.tokenizer, "embedded", size, 64).ids, 2)
        assert result.samples == size
        assert result.distances == alone.distances
    assert outcomes[5].num_layers == tiny_llama.num_layers
    pruned = outcomes[6].loaded
    assert pruned.num_layers == tiny_llama.num_layers - 2
    assert not any(recording_hooks(layer) for layer in pruned.model.model.layers)
    assert not any(recording_hooks(layer) for layer in tiny_llama.model.model.layers)
    assert len(store.list_runs("similarity", "done")) == len(sizes)


def test_model_lock_is_per_model_and_reentrant(tiny_llama):
    other = torch.nn.Linear(1, 1)
    with exclusive(tiny_llama.model), exclusive(tiny_llama.model):  # a backend call inside another
        taken = []
        thread = threading.Thread(target=lambda: taken.append(model_lock(other).acquire(timeout=5)))
        thread.start()
        thread.join()
        assert taken == [True]  # another model is not blocked
        blocked = []
        thread = threading.Thread(target=lambda: blocked.append(model_lock(tiny_llama.model).acquire(timeout=0.2)))
        thread.start()
        thread.join()
        assert blocked == [False]  # the same model is


SLOW_COMPUTE = """
import sys, time
from explorer.state.store import Store
def compute():
    time.sleep(1.5)
    return {"pid": __import__("os").getpid()}
print(Store(sys.argv[1]).cached("similarity", "k", "m", {}, compute)[0])
"""


def test_processes_computing_the_same_key_compute_it_once(tmp_path):
    """A CLI beside the server: the file lock next to the store makes the second process wait."""
    path = tmp_path / "runs.sqlite"
    procs = [subprocess.Popen([sys.executable, "-c", SLOW_COMPUTE, str(path)], stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    ids = {p.communicate(timeout=60)[0].strip() for p in procs}
    from explorer.state.store import Store

    assert len(ids) == 1
    assert len(Store(path).list_runs("similarity")) == 1

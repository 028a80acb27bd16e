"""Data-parallel healing: `accelerate launch --multi_gpu --num_processes 2 -m explorer heal --device cpu`
(two torchrun processes joined over gloo)
trains the same adapter as one process on the combined batches, and writes once."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from explorer.state.store import Store
from explorer.surgery.heal import HealConfig, heal, training_batches
from explorer.surgery.parallel import label_tokens
from explorer.surgery.prune import prune_block

pytestmark = pytest.mark.slow  # processes under accelerate

STEPS, BATCH, SEQ = 3, 4, 48
WORDS = "the river city council said on monday that a new bridge would open next year after long delays".split()


def varied_text(path) -> str:
    """Documents of 20 to 60 words, so the two halves of a batch hold different token counts
    (the case where a plain average of per-rank mean losses would be wrong)."""
    rng = random.Random(1)
    docs = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 60))) for _ in range(40)]
    path.write_text("\n\n".join(docs) + "\n")
    return str(path)


def test_two_processes_heal_like_one_on_the_combined_batches(tiny_llama, tiny_llama_dir, tmp_path):
    text = varied_text(tmp_path / "varied.txt")
    config = HealConfig(steps=STEPS, batch_size=BATCH, seq_len=SEQ, dropout=0.0, lr=5e-3, rank=4,
                        alpha=8, eval_every=2, eval_limit=2, val_samples=2, source=text)
    halves = [(label_tokens(b[2][:2]), label_tokens(b[2][2:])) for b in training_batches(tiny_llama, config)]
    assert any(a != b for a, b in halves), halves  # unequal token counts per rank: the weighting matters

    out, home = tmp_path / "healed", tmp_path / "home"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "explorer", "heal", "--model", str(tiny_llama_dir),
              "--device", "cpu", "--start", "1", "--n", "1", "--steps", str(STEPS), "--batch-size", str(BATCH),
              "--seq-len", str(SEQ), "--dropout", "0", "--lr", "5e-3", "--rank", "4", "--alpha", "8", "--eval-every", "2",
              "--eval-limit", "2", "--val-samples", "2", "--text-file", text, "--out", str(out)]
    env = {**os.environ, "EXPLORER_HOME": str(home), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(launch, capture_output=True, text=True, timeout=400, env=env)
    assert done.returncode == 0, done.stderr[-3000:]

    store = Store(home / "explorer.sqlite")
    runs = store.list_runs(kind="heal")
    assert len(runs) == 1 and runs[0].status == "done" and runs[0].settings["processes"] == 2
    events = store.events(runs[0].id)
    steps = [(e["kind"], e["step"]) for e in events if e["kind"] in ("train", "eval", "reference")]
    assert steps == [("reference", 0), ("eval", 0), ("train", 1), ("train", 2), ("eval", 2), ("train", 3), ("eval", 3)]
    assert done.stderr.count("step 3/3: train loss") == 1  # printed once, by the main process
    assert len(store.list_runs(kind="quick-eval")) == 1
    record = json.loads((out / "run.json").read_text())
    assert record["world_size"] == 2 and record["run_id"] == runs[0].id

    single_events: list[dict] = []
    pruned = prune_block(tiny_llama, 1, 1).loaded
    single = heal(pruned, config, single_events.append).healed.model.state_dict()
    parallel = load_file(out / "model.safetensors")
    base = pruned.model.state_dict()
    trained = [name for name in parallel if "proj" in name]
    assert trained and set(parallel) <= set(single)
    moved = max(float((single[name] - base[name]).abs().max()) for name in trained)
    diff = max(float((single[name] - parallel[name]).abs().max()) for name in parallel)
    print(f"2-process vs 1-process merged weights: max abs diff {diff:.2e} (training moved them by up to {moved:.2e})")
    assert moved > 1e-3 and diff < 1e-5
    single_losses = [e["train_loss"] for e in single_events if e["kind"] == "train"]
    parallel_losses = [e["train_loss"] for e in events if e["kind"] == "train"]
    assert torch.allclose(torch.tensor(parallel_losses), torch.tensor(single_losses), atol=1e-5)


def test_a_heal_job_on_two_processes_writes_once(tiny_llama_dir, tmp_path):
    """The page's multi-GPU option: the job runner starts the ranks under accelerate (on CPU here)."""
    from explorer import jobs
    from explorer.state.files import log_path, run_folder

    store = Store(tmp_path / "runs.sqlite")
    settings = {"model": {"source": str(tiny_llama_dir), "device": "cpu"}, "start": 1, "n": 1, "processes": 2,
                "heal": {"steps": 2, "batch_size": 2, "seq_len": 32, "eval_every": 2, "eval_limit": 2, "val_samples": 2}}
    run_id = jobs.submit(store, "heal", "tiny", settings)
    deadline = time.time() + 400
    while store.get_run(run_id).status in jobs.ACTIVE and time.time() < deadline:
        time.sleep(0.5)
    run = store.get_run(run_id)
    assert run.status == "done", (run.error, log_path(store, run_id).read_text()[-3000:])
    assert run.result["world_size"] == 2 and run.result["folder"] == str(run_folder(store, run_id))
    assert [e["step"] for e in store.events(run_id) if e["kind"] == "train"] == [1, 2]
    assert json.loads((run_folder(store, run_id) / "run.json").read_text())["world_size"] == 2

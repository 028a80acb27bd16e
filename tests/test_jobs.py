"""Background jobs in real subprocesses: every step reaches the store, a killed runner is
reaped as failed, cancel stops a run, and a second job waits for the first."""

from __future__ import annotations

import os
import re
import signal
import time

import pytest

from explorer import jobs
from explorer.state.files import log_path, run_folder
from explorer.state.store import Store

pytestmark = pytest.mark.slow  # real runner processes

TIMEOUT = 240


def heal_settings(model_dir, steps: int, start: int = 1, n: int = 1) -> dict:
    return {
        "model": {"source": str(model_dir), "device": "cpu", "load_in_4bit": False, "trust_remote_code": False},
        "start": start,
        "n": n,
        "allow_final": False,
        "heal": {"steps": steps, "batch_size": 2, "seq_len": 32, "train_samples": 4, "eval_every": 2,
                 "eval_limit": 2, "val_samples": 2},
    }


def wait_for(condition, what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.3)


def trained_steps(store: Store, run_id: int) -> int:
    return sum(1 for e in store.events(run_id) if e["kind"] == "train")


def stop(store: Store, run_id: int) -> None:
    """Cleanup: never leave a runner behind."""
    run = store.get_run(run_id)
    if run.pid and jobs.is_alive(run.pid, run_id):
        os.kill(run.pid, signal.SIGKILL)
        wait_for(lambda: not jobs.is_alive(run.pid, run_id), "the runner to die", 30)


def test_job_runs_in_a_subprocess_and_records_every_step(store, tiny_llama_dir):
    run_id = jobs.submit(store, "heal", "tiny", {**heal_settings(tiny_llama_dir, steps=3), "save": True, "dtype": "bf16"})
    assert store.get_run(run_id).status in ("queued", "running") and store.get_run(run_id).pid != os.getpid()
    wait_for(lambda: jobs.list_jobs(store)[0].status not in jobs.ACTIVE, "the job to finish")
    run = store.get_run(run_id)
    assert run.status == "done", (run.error, log_path(store, run_id).read_text()[-2000:])
    events = store.events(run_id)
    assert [e["step"] for e in events if e["kind"] == "train"] == [1, 2, 3]
    assert [e["kind"] for e in events if e["kind"] in ("reference", "eval")] == ["reference", "eval", "eval", "eval"]
    assert run.result["folder"] == str(run_folder(store, run_id))
    assert (run_folder(store, run_id) / "config.json").is_file()
    assert (run_folder(store, run_id) / "mergekit.yaml").is_file()
    from safetensors import safe_open

    with safe_open(run_folder(store, run_id) / "model.safetensors", "pt") as saved:
        assert {str(saved.get_tensor(name).dtype) for name in saved.keys()} == {"torch.bfloat16"}
    assert set(run.result["metrics"]) == {"before_pruning", "after_pruning", "healed"}
    reference = store.list_runs("quick-eval", "done")  # the unpruned model's numbers, cached for the next heal
    assert len(reference) == 1 and reference[0].result["val_loss"] == run.result["metrics"]["before_pruning"]["val_loss"]


def test_a_killed_job_is_reaped_as_failed_and_keeps_its_events(store, tiny_llama_dir):
    run_id = jobs.submit(store, "heal", "tiny", heal_settings(tiny_llama_dir, steps=100_000))
    try:
        wait_for(lambda: trained_steps(store, run_id) >= 1, "the first step")
        pid = store.get_run(run_id).pid
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not jobs.is_alive(pid, run_id), "the runner to die", 30)
        assert store.get_run(run_id).status == "running"  # nothing recorded the death yet
        assert jobs.reap(store) == [run_id]
        run = store.get_run(run_id)
        assert (run.status, run.error) == ("failed", jobs.DIED)
        assert trained_steps(store, run_id) >= 1
    finally:
        stop(store, run_id)


def test_a_second_job_queues_and_cancel_stops_both(store, tiny_llama_dir):
    first = jobs.submit(store, "heal", "tiny", heal_settings(tiny_llama_dir, steps=100_000))
    second = jobs.submit(store, "heal", "tiny", heal_settings(tiny_llama_dir, steps=100_000))
    try:
        wait_for(lambda: trained_steps(store, first) >= 1, "the first job's first step")
        time.sleep(2)  # several polls of the second runner
        assert store.get_run(second).status == "queued" and store.events(second) == []
        assert jobs.is_alive(store.get_run(second).pid, second)
        assert re.fullmatch(rf"waiting for run #{first} \(heal, (training|evaluating at step \d+)\)", jobs.queue_reason(store, second))

        jobs.cancel(store, first)
        first_pid = store.get_run(first).pid
        wait_for(lambda: not jobs.is_alive(first_pid, first), "the cancelled runner to exit", 60)
        assert store.get_run(first).status == "cancelled"
        wait_for(lambda: store.get_run(second).status == "running", "the queued job to start")

        jobs.cancel(store, second)
        second_pid = store.get_run(second).pid
        wait_for(lambda: not jobs.is_alive(second_pid, second), "the second runner to exit", 60)
        assert [r.status for r in jobs.list_jobs(store)] == ["cancelled", "cancelled"]
        assert "Traceback" not in log_path(store, first).read_text()
    finally:
        stop(store, first)
        stop(store, second)


def test_a_bad_job_records_one_line(store, tiny_llama_dir):
    run_id = jobs.submit(store, "heal", "tiny", heal_settings(tiny_llama_dir, steps=2, start=3, n=1))
    wait_for(lambda: store.get_run(run_id).status not in jobs.ACTIVE, "the job to fail")
    run = store.get_run(run_id)
    assert run.status == "failed" and "final layer" in run.error and "\n" not in run.error

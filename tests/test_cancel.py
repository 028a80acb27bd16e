"""Jobs that really stop: a real runner process on a tiny model is cancelled while training,
while evaluating and inside sweep points, and must be gone within a few seconds with no result
recorded; one ignoring SIGTERM is killed; a finished runner leaves no zombie; and
`python -m explorer job ID` refuses anything but a queued job. (What a queued job waits for:
tests/test_jobs.py.)"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from explorer import jobs
from explorer.state.files import log_path, run_folder
from explorer.state.store import Store
from tests.test_jobs import heal_settings, stop, trained_steps, wait_for

pytestmark = pytest.mark.slow  # real runner processes cancelled in each phase

LATENCY = jobs.GRACE_SECONDS + 2.0  # cancel to a vanished runner: it leaves by itself (~1 s), or is SIGKILLed at 5 s
WORDS = "the of river mountain quiet seven purple engine letter winter city number garden bright".split()


@pytest.fixture(scope="module")
def long_text(tmp_path_factory) -> Path:
    """1200 documents of ~500 tokens: 120 held-out ones make a tiny model's evaluation slow
    enough (tens of seconds) to cancel in the middle of it."""
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("text") / "long.txt"
    path.write_text("\n\n".join(" ".join(rng.choices(WORDS, k=450)) for _ in range(1200)))
    return path


def slow_eval_settings(model_dir, text: Path, steps: int = 2) -> dict:
    settings = heal_settings(model_dir, steps)
    settings["heal"].update(source=str(text), seq_len=512, val_samples=120, eval_batch_size=4)
    return settings


def phase(store: Store, run_id: int) -> str | None:
    return next((e["phase"] for e in reversed(store.events(run_id)) if e["kind"] == "phase"), None)


def cancel_and_time(store: Store, run_id: int) -> float:
    """Cancel, then seconds until the runner process no longer exists."""
    pid = store.get_run(run_id).pid
    started = time.perf_counter()
    jobs.cancel(store, run_id)
    wait_for(lambda: not jobs.is_alive(pid, run_id), "the cancelled runner to exit", 30)
    latency = time.perf_counter() - started
    print(f"\ncancel latency ({phase(store, run_id)}): {latency:.2f} s, load {os.getloadavg()[0]:.1f}")
    return latency


def assert_cancelled_cleanly(store: Store, run_id: int, kinds_before: list[str]) -> None:
    time.sleep(1)  # anything a surviving runner would still write
    run = store.get_run(run_id)
    assert (run.status, run.result) == ("cancelled", None)
    assert [e["kind"] for e in store.events(run_id)] == kinds_before, "an event was recorded after cancel"
    assert "Traceback" not in log_path(store, run_id).read_text()


def test_cancel_while_training_stops_within_seconds(store, tiny_llama_dir):
    settings = heal_settings(tiny_llama_dir, steps=100_000)
    settings["heal"]["eval_every"] = 100_000
    run_id = jobs.submit(store, "heal", "tiny", settings)
    try:
        wait_for(lambda: trained_steps(store, run_id) >= 2, "training")
        assert phase(store, run_id) == "training"
        before = [e["kind"] for e in store.events(run_id)]
        assert cancel_and_time(store, run_id) < LATENCY
        events = [e["kind"] for e in store.events(run_id)]
        assert_cancelled_cleanly(store, run_id, events)
        assert events[: len(before)] == before and "eval" not in events[len(before):]
    finally:
        stop(store, run_id)


def test_cancel_while_evaluating_stops_within_seconds(store, tiny_llama_dir, long_text):
    run_id = jobs.submit(store, "heal", "tiny", slow_eval_settings(tiny_llama_dir, long_text))
    try:
        wait_for(lambda: (phase(store, run_id) or "").startswith("evaluating"), "an evaluation")
        time.sleep(1)
        assert (phase(store, run_id) or "").startswith("evaluating")  # still inside it
        before = [e["kind"] for e in store.events(run_id)]
        assert cancel_and_time(store, run_id) < LATENCY
        assert_cancelled_cleanly(store, run_id, before)
    finally:
        stop(store, run_id)


def test_cancel_during_a_sweep_point_stops_within_seconds(store, tiny_llama_dir, long_text):
    settings = {"model": str(tiny_llama_dir), "device": "cpu", "strategies": ["simple"], "stride": 1, "limit": 4,
                "text": str(long_text), "val_samples": 30, "seq_len": 512, "batch_size": 4}
    run_id = jobs.submit(store, "sweep", "tiny", settings)
    try:
        wait_for(lambda: any(e["kind"] == "point" for e in store.events(run_id)), "the first point")
        before = [e["kind"] for e in store.events(run_id)]
        assert cancel_and_time(store, run_id) < LATENCY
        assert_cancelled_cleanly(store, run_id, before)
        assert before.count("point") == 1  # the second point, in progress, was not recorded
    finally:
        stop(store, run_id)


def test_a_runner_that_ignores_sigterm_is_killed_after_the_grace_period(store):
    run_id = store.create_run("heal", "tiny", {}, status="running")
    stubborn = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                                 "print('ready', flush=True); time.sleep(120)", "job", str(run_id)], stdout=subprocess.PIPE)
    try:
        assert stubborn.stdout.readline().strip() == b"ready"
        store.update_run(run_id, pid=stubborn.pid)
        started = time.perf_counter()
        jobs.cancel(store, run_id, grace=1.0)
        assert stubborn.wait(timeout=10) == -9  # SIGKILL
        assert 1.0 <= time.perf_counter() - started < 4.0
        assert store.get_run(run_id).status == "cancelled"
    finally:
        stubborn.kill()
        stubborn.wait()


def zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False  # gone entirely: reaped


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs procfs to see defunct processes")
def test_a_finished_runner_leaves_no_zombie_and_job_refuses_finished_runs(store, tiny_llama_dir):
    run_id = jobs.submit(store, "heal", "tiny", heal_settings(tiny_llama_dir, steps=1))
    pid = store.get_run(run_id).pid
    wait_for(lambda: store.get_run(run_id).status not in jobs.ACTIVE, "the job to finish")  # no reap: status only
    run = store.get_run(run_id)
    assert run.status == "done" and "folder" not in run.result  # saving is a choice, off by default
    assert not run_folder(store, run_id).exists()
    wait_for(lambda: not Path(f"/proc/{pid}").exists() or not zombie(pid), "the runner to exit", 30)
    time.sleep(0.5)
    assert not zombie(pid), "the finished runner is a defunct process"

    events = store.events(run_id)
    similarity = store.create_run("similarity", "tiny", {"samples": 4}, status="done")
    for target, reason in ((run_id, "already done"), (similarity, "not a background job")):
        done = subprocess.run([sys.executable, "-m", "explorer", "job", str(target), "--store", str(store.path)],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and reason in done.stderr and "nothing was changed" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
    assert store.get_run(similarity).status == "done"
    assert store.get_run(run_id).status == "done" and store.events(run_id) == events


def test_cancel_from_a_page_stops_a_foreground_cli_run(store):
    """A CLI sweep or classify run is a store run without a runner process (no pid): a page's
    Cancel marks it cancelled and the CLI's work sees it at its next check and stops; the run stays
    cancelled (Store.running never turns it done) and the error reaches the CLI."""
    import threading

    from explorer.cli import _run_in_foreground
    from explorer.experiments.sweep import SweepCancelled

    run_id = store.create_run("sweep", "tiny", {})
    checks: list[float] = []

    def execute(store: Store, run_id: int, report, should_stop) -> dict:
        report({"kind": "phase", "phase": "measuring"})
        while not should_stop():  # the work between points
            checks.append(time.monotonic())
            time.sleep(0.05)
        raise SweepCancelled("The sweep was cancelled; 0 points are saved and a restart resumes.")

    threading.Timer(0.5, jobs.cancel, (store, run_id)).start()
    with pytest.raises(SweepCancelled):
        _run_in_foreground(store, run_id, execute, lambda event: None)
    run = store.get_run(run_id)
    assert (run.status, run.error, run.result) == ("cancelled", jobs.CANCELLED, None) and len(checks) >= 2

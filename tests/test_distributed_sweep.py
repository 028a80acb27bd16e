"""Sweeps on a local Ray instance with 2 CPU workers: the same points as the local executor,
cancelling stops the outstanding blocks, and a cancelled Ray sweep resumes (here on the local executor)."""

from __future__ import annotations

import time

import pytest

from explorer.experiments.sweep import SweepCancelled, SweepSettings, execute, start_sweep, sweep_points
from explorer.state.store import Store

pytestmark = pytest.mark.slow  # a local Ray instance

ray = pytest.importorskip("ray", reason="Ray is optional: pip install -r requirements-distributed.txt")
RAY = {"executor": "ray"}
VARYING = {"seconds", "time", "step", "shared", "resumed"}  # timing, arrival order, and which strategy measured a shared block


@pytest.fixture(scope="module")
def local_ray():
    from explorer.experiments.sweep.distributed import connect

    connect(num_cpus=2)
    yield
    ray.shutdown()


def tiny_sweep(model_dir) -> SweepSettings:
    return SweepSettings(model=str(model_dir), strategies=("simple", "top-cut"), stride=1, limit=4, val_samples=2,
                         sim_samples=2, seq_len=32, batch_size=2, device="cpu")


def comparable(points: list[dict]) -> dict:
    return {(p["strategy"], p["n"], p["healed"]): {k: v for k, v in p.items() if k not in VARYING} for p in points}


def test_ray_sweep_gives_the_local_points(local_ray, tiny_llama_dir, tmp_path):
    settings = tiny_sweep(tiny_llama_dir)
    timings, results = {}, {}
    for name, executor in (("local", None), ("ray", RAY)):
        store = Store(tmp_path / f"{name}.sqlite")
        run_id = start_sweep(store, settings, executor=executor)
        started = time.perf_counter()
        results[name] = execute(store, run_id)
        timings[name] = time.perf_counter() - started
        assert len(sweep_points(store, run_id)) == 8  # n = 0..3 for both strategies
    print(f"tiny sweep: local {timings['local']:.1f} s, Ray (2 CPU workers) {timings['ray']:.1f} s")
    local, remote = comparable(results["local"]["points"]), comparable(results["ray"]["points"])
    assert local.keys() == remote.keys()
    for key, point in local.items():
        numbers = {k: v for k, v in point.items() if not isinstance(v, dict)}
        assert {k: remote[key][k] for k in numbers} == pytest.approx(numbers, abs=1e-6), key
        assert remote[key].get("predictions") == point.get("predictions"), key
    assert results["ray"]["first_at_chance"] == results["local"]["first_at_chance"]


def test_cancelling_a_ray_sweep_stops_its_workers_and_it_resumes_locally(local_ray, tiny_llama_dir, tmp_path):
    store = Store(tmp_path / "runs.sqlite")
    settings = tiny_sweep(tiny_llama_dir)
    run_id = start_sweep(store, settings, executor=RAY)
    seen: list[dict] = []

    def report(event: dict) -> None:
        seen.extend([event] if event.get("kind") == "point" else [])

    with pytest.raises(SweepCancelled, match="restart resumes"):
        execute(store, run_id, report, should_stop=lambda: bool(seen))
    measured = len(sweep_points(store, run_id))
    assert 1 <= measured < 8
    deadline = time.time() + 30
    while ray.available_resources().get("CPU", 0) < 2 and time.time() < deadline:  # the killed workers free their CPUs
        time.sleep(0.2)
    assert ray.available_resources().get("CPU", 0) == 2
    assert len(sweep_points(store, run_id)) == measured  # nothing arrives after the cancel

    restart = start_sweep(store, settings)  # the same settings on the local executor resume the Ray sweep's points
    assert len(execute(store, restart)["points"]) == 8
    assert sum(bool(p.get("resumed")) for p in sweep_points(store, restart)) == measured


def test_the_cli_names_a_ray_address_without_the_ray_executor(tmp_path, capsys):
    from explorer.cli import main

    assert main(["sweep", "--ray-address", "127.0.0.1:6379", "--out", str(tmp_path / "sweep.json")]) == 2
    assert capsys.readouterr().err.strip() == "error: --ray-address needs --executor ray."

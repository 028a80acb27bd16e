"""The phase-transition sweep on the embedded model with a tiny task subset, its resume, the
CLI, and the scale path (device_map="auto") on the tiny llama."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from explorer.analysis.similarity import compute_distances
from explorer.cli import _sweep_arguments, _sweep_settings, main
from explorer.core.errors import ExplorerError
from explorer.evaluation.evaluate import run_task, validation_loss
from explorer.experiments.sweep import (
    SweepCancelled,
    SweepSettings,
    first_at_chance,
    load_for_sweep,
    parse_fractions,
    point_key,
    profile_parts,
    run_sweep,
    start_sweep,
    summary,
    sweep_points,
    teaching_preset,
)
from explorer.lm.data import make_samples
from explorer.state.cache import cached_distances
from explorer.state.store import Store

TINY = dict(fractions=(0.0, 0.2), limit=8, val_samples=4, sim_samples=4, seq_len=32, batch_size=8)


class Counter:
    """should_stop is asked once before each point is measured: counting calls counts measurements."""

    def __init__(self, stop_after: int | None = None):
        self.calls, self.stop_after = 0, stop_after

    def __call__(self) -> bool:
        self.calls += 1
        return self.stop_after is not None and self.calls > self.stop_after


@pytest.fixture(scope="module")
def sweep(embedded, tmp_path_factory):
    """A sweep cancelled after 3 points, then restarted (a new run, same settings) to the end."""
    store = Store(tmp_path_factory.mktemp("sweep") / "runs.sqlite")
    settings = SweepSettings(**TINY)
    first = start_sweep(store, settings)
    with pytest.raises(SweepCancelled):
        run_sweep(embedded, settings, store, first, should_stop=Counter(stop_after=3))
    second = start_sweep(store, settings)
    counter = Counter()
    result = run_sweep(embedded, settings, store, second, should_stop=counter)
    return {"store": store, "settings": settings, "first": first, "second": second, "result": result, "measured": counter.calls}


def test_every_strategy_gives_points(sweep):
    points = sweep_points(sweep["store"], sweep["second"])
    assert sorted(point_key(p) for p in points) == sorted(
        (s, n, "none") for s in ("similarity", "simple", "top-cut") for n in (0, 6)
    )
    by_key = {point_key(p): p for p in points}
    assert by_key[("simple", 6, "none")]["start"] == 23  # [L-1-n, L-1)
    assert by_key[("top-cut", 6, "none")]["start"] == 24  # the top n, final layer included
    for p in points:
        assert 0 <= p["ci_low"] <= p["accuracy"] <= p["ci_high"] <= 1
        assert p["fraction"] == pytest.approx(p["n"] / 30)
    assert sweep["result"]["points"] == sorted(points, key=lambda p: (p["strategy"], p["healed"], p["n"]))


def test_similarity_point_uses_the_heatmap_minimum(embedded, sweep):
    settings = sweep["settings"]
    _, heatmap, cached = cached_distances(embedded, settings.text, settings.sim_samples, settings.seq_len, store=sweep["store"])
    assert cached  # the sweep computed and saved it
    row = heatmap.distances[5][: 30 - 6]  # n = 6, blocks that keep the final layer
    point = next(p for p in sweep_points(sweep["store"], sweep["second"]) if point_key(p) == ("similarity", 6, "none"))
    assert point["start"] == row.index(min(row))


def test_unpruned_point_equals_the_unpruned_model(embedded, sweep):
    settings = sweep["settings"]
    report = run_task(embedded, settings.task, settings.limit, settings.batch_size)
    loss = validation_loss(embedded, settings.text, settings.val_samples, settings.seq_len, settings.batch_size)
    zeros = [p for p in sweep_points(sweep["store"], sweep["second"]) if p["n"] == 0]
    assert len(zeros) == 3
    for p in zeros:
        assert p["accuracy"] == report.accuracy and (p["ci_low"], p["ci_high"]) == (report.ci_low, report.ci_high)
        assert p["val_loss"] == pytest.approx(loss, rel=1e-6)
        assert p["normalized_loss"] == pytest.approx(0.0, abs=1e-9)
    assert embedded.num_layers == 30 and embedded.model.config.num_hidden_layers == 30  # points prune views
    assert [layer.self_attn.layer_idx for layer in embedded.model.model.layers] == list(range(30))


def test_restart_resumes_and_a_finished_sweep_is_reused(embedded, sweep):
    store, settings = sweep["store"], sweep["settings"]
    cancelled, resumed = sweep_points(store, sweep["first"]), sweep_points(store, sweep["second"])
    assert len(cancelled) == 3
    assert sweep["measured"] == 6 - 3  # only the missing points were measured
    assert sum(p.get("resumed", False) for p in resumed) == 3
    assert len({point_key(p) for p in resumed}) == len(resumed) == 6  # no duplicates
    third = start_sweep(store, settings)
    counter = Counter()
    again = run_sweep(embedded, settings, store, third, should_stop=counter)
    assert counter.calls == 0
    strip = lambda p: {k: v for k, v in p.items() if k not in ("step", "time", "resumed", "seconds")}  # noqa: E731
    assert [strip(p) for p in again["points"]] == [strip(p) for p in sweep["result"]["points"]]


def test_healed_points(tiny_llama, tmp_path):
    """Healing one step per point adds a healed twin of each point; before healing, the heal
    run's own step-0 evaluation (zero-initialized adapters) equals the plain measurement."""
    store = Store(tmp_path / "runs.sqlite")
    settings = SweepSettings(**{**TINY, "model": "tiny", "strategies": ("simple",), "fractions": (0.5,), "heal_steps": 1,
                                "limit": 4, "seq_len": 16})
    run_id = start_sweep(store, settings)
    result = run_sweep(tiny_llama, settings, store, run_id)
    by_key = {point_key(p): p for p in result["points"]}
    assert sorted(by_key) == [("simple", 0, "lora"), ("simple", 0, "none"), ("simple", 2, "lora"), ("simple", 2, "none")]
    loss = validation_loss(tiny_llama, settings.text, settings.val_samples, settings.seq_len, settings.batch_size)
    assert by_key[("simple", 0, "none")]["val_loss"] == pytest.approx(loss, rel=1e-5)
    assert by_key[("simple", 2, "lora")]["val_loss"] != by_key[("simple", 2, "none")]["val_loss"]
    assert by_key[("simple", 2, "lora")]["normalized_loss"] is None  # random weights: no better than uniform


def test_block_sizes_and_fraction_checks():
    settings = SweepSettings(fractions=(0.1, 0.5, 0.99))
    assert settings.block_sizes(30) == [0, 3, 15, 29]
    assert SweepSettings(stride=7).block_sizes(30) == [0, 7, 14, 21, 28]
    for bad in ((1.0,), (-0.1,), (0.2, 1.5)):
        with pytest.raises(ExplorerError, match=r"in \[0, 1\)"):
            SweepSettings(fractions=bad).check()
    with pytest.raises(ExplorerError, match="comma-separated"):
        parse_fractions("0, half")
    assert parse_fractions("0, 0.1;0.25") == (0.0, 0.1, 0.25)
    with pytest.raises(ExplorerError, match="strategy"):
        SweepSettings(strategies=("deepest",)).check()
    with pytest.raises(ExplorerError, match="stride"):
        SweepSettings(stride=0).check()
    assert SweepSettings.from_json(SweepSettings(fractions=(0.5,)).to_json()) == SweepSettings(fractions=(0.5,))


def test_first_at_chance():
    def point(n, low, high):
        return {"strategy": "simple", "healed": False, "n": n, "fraction": n / 10, "accuracy": (low + high) / 2,
                "ci_low": low, "ci_high": high, "chance": 0.25}

    points = [point(0, 0.6, 0.9), point(2, 0.3, 0.6), point(4, 0.2, 0.5), point(6, 0.1, 0.3)]
    assert first_at_chance(points, "simple")["n"] == 4
    assert first_at_chance(points[:2], "simple") is None
    assert summary(points)["first_at_chance"] == {"simple": 0.4}


def test_cli_sweep_and_resume(tiny_llama_dir, tmp_path, capsys):
    args = ["sweep", "--model", str(tiny_llama_dir), "--device", "cpu", "--strategies", "simple,top-cut",
            "--fractions", "0,0.5", "--limit", "4", "--samples", "2", "--val-samples", "2", "--seq-len", "16"]
    assert main([*args, "--out", str(tmp_path / "a.json")]) == 0
    first = json.loads((tmp_path / "a.json").read_text())
    assert sorted(point_key(p) for p in first["points"]) == [("simple", 0, "none"), ("simple", 2, "none"),
                                                             ("top-cut", 0, "none"), ("top-cut", 2, "none")]
    assert main([*args, "--out", str(tmp_path / "b.json")]) == 0
    second = json.loads((tmp_path / "b.json").read_text())
    assert all(p["resumed"] for p in second["points"])
    assert [p["accuracy"] for p in second["points"]] == [p["accuracy"] for p in first["points"]]
    capsys.readouterr()
    (tmp_path / "file").write_text("")
    assert main([*args, "--out", str(tmp_path / "file" / "c.json")]) == 2  # unwritable --out: refused before any work
    assert "Cannot write --out" in capsys.readouterr().err
    assert main(["sweep", "--fractions", "0,1", "--out", str(tmp_path / "d.json")]) == 2
    assert "in [0, 1)" in capsys.readouterr().err


# Half the layers on "disk": accelerate dispatches the model with the same per-module hooks
# (AlignDevicesHook) it uses to spread a large model over several GPUs, on one CPU.
SPLIT = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "cpu", "model.layers.2": "disk",
         "model.layers.3": "disk", "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}


@pytest.mark.parametrize("device_map", ["auto", SPLIT], ids=["auto", "cpu+disk"])
def test_device_map_needs_no_code_change(tiny_llama, tiny_llama_dir, tmp_path, device_map):
    """A model placed by accelerate (device_map="auto", one device here; or split across devices
    with dispatch hooks) runs the similarity pass and the sweep unchanged, with the plainly
    loaded model's numbers."""
    settings = SweepSettings(model=str(tiny_llama_dir), device="cpu", device_map=device_map, strategies=("similarity", "simple"),
                             fractions=(0.0, 0.5), limit=4, val_samples=2, sim_samples=2, seq_len=16)
    placed = load_for_sweep(settings)
    if isinstance(device_map, dict):
        assert hasattr(placed.model.model.layers[3], "_hf_hook")  # dispatched by accelerate
    samples = make_samples(tiny_llama.tokenizer, "embedded", 3, 16).ids
    for ours, plain in zip(compute_distances(placed, samples, 2).distances, compute_distances(tiny_llama, samples, 2).distances):
        assert ours == pytest.approx(plain, abs=1e-6)
    results = []
    for loaded in (placed, tiny_llama):
        store = Store(tmp_path / f"{len(results)}.sqlite")
        results.append(run_sweep(loaded, settings, store, start_sweep(store, settings))["points"])
    for auto, plain in zip(*results, strict=True):
        assert point_key(auto) == point_key(plain)
        assert auto["accuracy"] == plain["accuracy"] and auto["val_loss"] == pytest.approx(plain["val_loss"], rel=1e-5)


def _parsed_sweep_settings(argv: list[str]) -> SweepSettings:
    parser = argparse.ArgumentParser()
    _sweep_arguments(parser)
    return _sweep_settings(parser.parse_args([*argv, "--out", "unused.json"]))


def test_cli_teaching_preset_keeps_what_is_not_given():
    """--teaching is the preset itself; only options actually given override it."""
    assert _parsed_sweep_settings(["--teaching"]) == teaching_preset()
    chosen = _parsed_sweep_settings(["--teaching", "--strategies", "top-cut", "--limit", "5"])
    assert (chosen.strategies, chosen.limit, chosen.stride) == (("top-cut",), 5, teaching_preset().stride)
    assert _parsed_sweep_settings([]) == SweepSettings()


def test_points_reusing_the_unpruned_forward_equal_whole_pruned_models(embedded, sweep, tmp_path):
    """The fixture's sweep replays the unpruned model's layers below each block (the default);
    measuring every pruned model whole gives the same points, and the profile splits the time."""
    store = Store(tmp_path / "runs.sqlite")
    timings: dict[str, float] = {}
    whole = run_sweep(embedded, sweep["settings"], store, start_sweep(store, sweep["settings"]), reuse=False, timings=timings)
    assert "recording" not in timings
    assert {"evaluation", "loss", "scoring", "bookkeeping"} <= set(timings)
    parts = profile_parts(timings)
    assert all(seconds >= 0 for seconds in parts.values()) and parts["loss"] > 0 and parts["scoring"] > 0
    assert sum(parts.values()) == pytest.approx(timings["evaluation"] + timings["bookkeeping"])
    for ours, reference in zip(sweep["result"]["points"], whole["points"]):
        assert point_key(ours) == point_key(reference) and ours["start"] == reference["start"]
        assert ours["accuracy"] == reference["accuracy"]
        assert ours["val_loss"] == pytest.approx(reference["val_loss"], abs=1e-5)


def test_linear_repair_is_an_axis(tiny_llama, tmp_path):
    """repair="linear" adds a linear-repair twin of each point, measured on the pruned view with the
    fitted map folded in (the shared weights untouched); a stored point with only "healed" keys as before."""
    from explorer.views.figures.sweep import accuracy_figure

    store = Store(tmp_path / "runs.sqlite")
    settings = SweepSettings(**{**TINY, "model": "tiny", "strategies": ("simple",), "fractions": (0.5,), "repair": "linear",
                                "limit": 4, "seq_len": 16, "repair_samples": 16})
    before = [p.detach().clone() for p in tiny_llama.model.parameters()]
    result = run_sweep(tiny_llama, settings, store, start_sweep(store, settings))
    by_key = {point_key(p): p for p in result["points"]}
    assert sorted(by_key) == [("simple", 0, "linear"), ("simple", 0, "none"), ("simple", 2, "linear"), ("simple", 2, "none")]
    assert by_key[("simple", 0, "linear")]["val_loss"] == pytest.approx(by_key[("simple", 0, "none")]["val_loss"], rel=1e-6)
    assert by_key[("simple", 2, "linear")]["val_loss"] != by_key[("simple", 2, "none")]["val_loss"]
    assert 0 < by_key[("simple", 2, "linear")]["heldout_residual"]
    assert all(torch.equal(a, b) for a, b in zip(before, tiny_llama.model.parameters()))
    assert set(result["first_at_chance"]) == {"simple", "simple linear"}
    assert {trace.name for trace in accuracy_figure(result["points"]).data if trace.name} == {"simple", "simple linear"}
    other = Store(tmp_path / "whole.sqlite")
    whole = run_sweep(tiny_llama, settings, other, start_sweep(other, settings), reuse=False)  # each block fitted alone
    for ours, reference in zip(result["points"], whole["points"], strict=True):
        assert point_key(ours) == point_key(reference) and ours["accuracy"] == reference["accuracy"]
        assert ours["val_loss"] == pytest.approx(reference["val_loss"], abs=1e-5)
        assert ours.get("heldout_residual") == pytest.approx(reference.get("heldout_residual"), abs=1e-9)
    legacy = {"strategy": "simple", "n": 2, "healed": True}
    assert point_key(legacy) == ("simple", 2, "lora")

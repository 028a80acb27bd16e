"""Speed and memory (explorer.evaluation.speed): what is timed is the pruned model itself, the memory
accounting adds up, the comparison is interleaved in one process and stored as a run, and bad input
to `python -m explorer speed` is one line. Tiny random-weight llamas (tests/conftest.py)."""

from __future__ import annotations

import json

import pytest
import torch

from explorer.cli import main
from explorer.core.errors import ExplorerError
from explorer.core.threads import threads_for
from explorer.evaluation.speed import (
    SpeedSettings,
    cache_bytes,
    check_outputs,
    decode,
    decode_parts,
    estimate_seconds,
    lockstep,
    measure_speed,
    memory,
    prompts,
    weight_bytes,
)
from explorer.experiments.speed import compared_models, drop_record, dropped_layers
from explorer.experiments.sweep import SweepSettings, profile_parts, run_sweep, start_sweep
from explorer.export.folder import save_prune
from explorer.lm.blocks import check_block, check_layer_set
from explorer.lm.forward import inference
from explorer.lm.layers import decoder_layers, pruned_view
from explorer.state.store import Store
from explorer.surgery.prune import prune_block
from explorer.views.figures.sweep import pareto_front, points_frame, speed_figure
from explorer.views.speed import describe_drop, speed_frame, speed_lines

TINY = SpeedSettings(prompt_tokens=6, new_tokens=4, batch_sizes=(1, 3), repeats=2)


def test_the_timed_loop_is_the_pruned_model(tiny_llama):
    """The weight-sharing view the measurement times gives, step by step, the logits of a physically
    pruned copy's normal forward (no cache), and the tokens transformers' own greedy generate picks."""
    view = tiny_llama.pruned(1, 2)
    copy = prune_block(tiny_llama, 1, 2).loaded
    assert len(decoder_layers(view.model)) == len(decoder_layers(copy.model)) == 2
    prompt = prompts(view.model, 2, 7)
    with inference(view.model):
        timed = decode(view.model, prompt, 5, keep_logits=True)
    with torch.no_grad():
        full = copy.model(input_ids=torch.cat([prompt, timed.tokens[:, :-1]], 1)).logits[:, 6:]
        generated = copy.model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=6,
                                        min_new_tokens=6, pad_token_id=0)
    assert timed.logits.shape == full.shape == (2, 6, view.model.config.vocab_size)
    torch.testing.assert_close(timed.logits, full, rtol=1e-4, atol=1e-5)
    assert torch.equal(timed.tokens, generated[:, 7:])
    assert check_outputs(view.model, prompt, 5) < 1e-5


def test_a_loop_that_is_not_the_model_is_refused(tiny_llama_dir):
    """A decode path that differs from the model's forward (here: logits shifted on one-token steps
    only, as a cache bug or a shortcut would) fails the check instead of being timed."""
    from explorer.lm.models import load_model

    model = load_model(str(tiny_llama_dir), device="cpu").model
    handle = model.lm_head.register_forward_hook(lambda module, args, out: out + 1.0 if args[0].shape[1] == 1 else out)
    try:
        with pytest.raises(ExplorerError, match="does not reproduce the model's own forward"):
            check_outputs(model, prompts(model, 1, 5), 3)
    finally:
        handle.remove()


def test_memory_accounting_adds_up(tiny_llama):
    """Weights are the parameter bytes; the KV cache is 2 x layers x kv heads x head dim x tokens x
    batch x 4 bytes (fp32); dense and pruned differ by exactly the removed layers' parameter bytes."""
    config = tiny_llama.model.config
    dense, pruned = tiny_llama.model, tiny_llama.pruned(1, 2).model
    by_hand = sum(p.numel() * 4 for p in dense.parameters()) + sum(b.numel() * b.element_size() for b in dense.buffers())
    assert weight_bytes(dense) == by_hand
    layers = decoder_layers(dense)
    removed = sum(p.numel() * p.element_size() for i in (1, 2) for p in layers[i].parameters())
    assert weight_bytes(dense) - weight_bytes(pruned) == removed > 0
    head_dim = config.hidden_size // config.num_attention_heads
    for model, count in ((dense, 4), (pruned, 2)):
        with inference(model):
            cache = decode(model, prompts(model, 3, 5), 4).cache
        assert cache_bytes(cache) == 2 * count * config.num_key_value_heads * head_dim * (5 + 4) * 3 * 4
        used = memory(model, prompts(model, 3, 5), 4)
        assert used["weights_bytes"] == weight_bytes(model) and used["kv_cache_bytes"] == cache_bytes(cache)
        assert used["rss_peak_delta_bytes"] is None or used["rss_peak_delta_bytes"] >= 0


def test_decode_step_parts_add_up(tiny_llama):
    parts = decode_parts(tiny_llama.model, prompts(tiny_llama.model, 1, 5), 3)
    assert all(value > 0 for value in parts.values())
    assert max(parts["before_layers"], parts["layers"], parts["after_layers"]) < parts["step"]


def test_measure_speed_end_to_end(tiny_llama):
    """Dense and pruned, interleaved in this process: every figure present and consistent, the
    ideal L / (L - n), the memory per token halved with half the layers, the thread cap untouched."""
    threads = torch.get_num_threads()
    phases = []
    result = measure_speed({"unpruned": tiny_llama.model, "pruned": tiny_llama.pruned(1, 2).model}, TINY, phases.append)
    assert torch.get_num_threads() == threads == result["threads"]
    assert any("checking pruned" in p for p in phases) and "timed repeat 2 of 2" in phases
    dense, pruned = result["models"]["unpruned"], result["models"]["pruned"]
    assert (dense["layers"], pruned["layers"]) == (4, 2)
    assert dense["kv_bytes_per_token"] == 2 * pruned["kv_bytes_per_token"] == 2 * 4 * 2 * 16 * 4
    for figures in (dense, pruned):
        assert figures["check_max_difference"] < 1e-5
        for batch in ("1", "3"):
            timing = figures["batches"][batch]
            assert len(timing["prefill_seconds"]) == len(timing["decode_seconds"]) == len(timing["decode_cpu_seconds"]) == 2
            assert timing["decode_tokens_per_s"]["max"] == int(batch) * 4 / min(timing["decode_seconds"])
            assert timing["decode_tokens_per_s"]["max"] >= timing["decode_tokens_per_s"]["median"]
    compared = result["comparisons"]["pruned"]
    assert compared["ideal"] == 2.0 and compared["layers_removed"] == 2
    decode1 = compared["decode"]["1"]["min"]
    assert decode1 == min(dense["batches"]["1"]["decode_seconds"]) / min(pruned["batches"]["1"]["decode_seconds"])
    assert compared["decode_vs_ideal"]["1"] == decode1 / 2.0
    assert compared["decode_cpu"]["1"]["min"] == (min(dense["batches"]["1"]["decode_cpu_seconds"])
                                                  / min(pruned["batches"]["1"]["decode_cpu_seconds"]))
    assert 1.0 < compared["bound_with_fixed_costs"] <= 2.0
    assert compared["weights_saved_bytes"] == dense["memory"]["weights_bytes"] - pruned["memory"]["weights_bytes"]
    frame = speed_frame(result)
    assert list(frame["model"]) == ["unpruned", "unpruned", "pruned", "pruned"] and list(frame["batch"]) == [1, 3, 1, 3]
    assert "ideal ×2.00" in speed_lines(result)[0]


def test_settings_are_checked():
    for bad, words in (({"batch_sizes": (0,)}, "at least 1"), ({"batch_sizes": (1, 1)}, "Each batch size once"),
                       ({"repeats": 0}, "repeats"), ({"new_tokens": 0}, "decode steps"), ({"prompt_tokens": 0}, "prompt")):
        with pytest.raises(ExplorerError, match=words):
            SpeedSettings(**bad).check()
    assert SpeedSettings.from_json(TINY.to_json()) == TINY


def test_estimate_grows_with_the_work():
    small = estimate_seconds(1e-3, 0.05, TINY, 2)
    assert small > 0 and estimate_seconds(1e-3, 0.05, TINY, 4) == 2 * small
    assert estimate_seconds(1e-3, 0.05, SpeedSettings(prompt_tokens=6, new_tokens=4, batch_sizes=(1, 3), repeats=4), 2) == small * 6 / 4


def cli_error(capsys, *argv: str) -> str:
    assert main(list(argv)) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize("argv, words", [
    (["--drop", "5"], "--drop takes START:N"),
    (["--drop", "a:2"], "--drop takes START:N"),
    (["--batch-sizes", "1,x"], "comma-separated whole numbers"),
    (["--batch-sizes", "0,8"], "at least 1"),
    (["--repeats", "0"], "repeats must be at least 1"),
    (["--drop", "1:2", "--reference", "embedded"], "not both"),
])
def test_bad_input_is_one_line_before_the_model_loads(argv, words, capsys, tmp_path):
    line = cli_error(capsys, "speed", "--model", "/nonexistent-lpe/model", *argv, "--out", str(tmp_path / "out.json"))
    assert line.startswith("error: ") and words in line
    assert not (tmp_path / "out.json").exists()


def test_a_block_that_does_not_fit_is_one_line(tiny_llama_dir, capsys, tmp_path):
    """Known only once the model is loaded: the progress lines, then one error line, and a failed run."""
    assert main(["speed", "--model", str(tiny_llama_dir), "--drop", "3:2", "--device", "cpu", "--out", str(tmp_path / "out.json")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("error: Block [3, 5) does not fit in 4 layers")
    run = Store().list_runs("speed")[0]
    assert run.status == "failed" and "does not fit" in run.error


def test_cli_measures_a_dropped_block_and_a_pruned_folder(tiny_llama, tiny_llama_dir, tmp_path, capsys):
    """--drop compares the model with its view; a pruned folder is compared with the source model
    its run.json names. Both are stored "speed" runs with the JSON written to --out."""
    small = ["--prompt-tokens", "6", "--new-tokens", "3", "--batch-sizes", "1,2", "--repeats", "2", "--device", "cpu"]
    out = tmp_path / "drop.json"
    assert main(["speed", "--model", str(tiny_llama_dir), "--drop", "1:2", *small, "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["comparisons"]["pruned"]["ideal"] == 2.0 and set(data["models"]) == {"unpruned", "pruned"}
    run = Store().get_run(data["run_id"])
    assert run.kind == "speed" and run.status == "done" and run.settings["drop"] == {"start": 1, "n": 2}
    assert run.result["comparisons"] == data["comparisons"]
    assert "decode ×" in capsys.readouterr().out and data["threads"] == threads_for("cli")

    folder = tmp_path / "pruned"
    save_prune(prune_block(tiny_llama, 0, 1), folder, str(tiny_llama_dir), {"strategy": "manual"})
    out = tmp_path / "folder.json"
    assert main(["speed", "--model", str(folder), *small, "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["names"]["reference"] == str(tiny_llama_dir) and data["comparisons"]["pruned"]["layers_removed"] == 1
    assert data["comparisons"]["pruned"]["ideal"] == 4 / 3


def test_sweep_times_each_point_when_asked(tiny_llama, tmp_path):
    """With `speed` on, every point carries its block's measured decode speedup and ideal L / (L - n)
    (n = 0 is the unpruned model: 1), the figure draws each curve's front, and the time it took is
    its own part of the sweep's profile."""
    store = Store(tmp_path / "runs.sqlite")
    settings = SweepSettings(model="tiny", strategies=("simple", "top-cut"), fractions=(0.0, 0.5), limit=4, val_samples=2,
                             sim_samples=2, seq_len=16, speed=True)
    timings: dict[str, float] = {}
    result = run_sweep(tiny_llama, settings, store, start_sweep(store, settings), timings=timings)
    assert len(result["points"]) == 4
    for point in result["points"]:
        assert point["ideal_speedup"] == 4 / (4 - point["n"]) and point["speedup"] > 0
        assert (point["speedup"] == 1.0) == (point["n"] == 0)
    assert profile_parts(timings)["speed"] > 0
    figure = speed_figure(result["points"])
    assert {trace.name for trace in figure.data if trace.showlegend is not False} == {"simple (Pareto front)", "top-cut (Pareto front)"}
    assert not SweepSettings().speed  # off by default: it costs time
    assert "speedup" in points_frame(result["points"]).columns


def test_pareto_front_is_the_undominated_points():
    """Against a brute-force check: a point is on the front when no other is at least as fast and as
    accurate and better on one count."""
    import random

    rng = random.Random(0)
    points = [{"speedup": round(rng.uniform(1, 2), 1), "accuracy": round(rng.uniform(0, 1), 1), "n": i} for i in range(40)]
    points.append({"speedup": None, "accuracy": 1.0, "n": 99})  # not timed: never on the front

    def dominated(p):
        return any(q is not p and q["speedup"] >= p["speedup"] and q["accuracy"] >= p["accuracy"]
                   and (q["speedup"], q["accuracy"]) != (p["speedup"], p["accuracy"]) for q in points[:-1])

    front = pareto_front(points)
    expected = [p for p in points[:-1] if not dominated(p)]
    assert {(p["speedup"], p["accuracy"]) for p in front} == {(p["speedup"], p["accuracy"]) for p in expected}
    assert [p["speedup"] for p in front] == sorted(p["speedup"] for p in front)
    assert [p["accuracy"] for p in front] == sorted((p["accuracy"] for p in front), reverse=True)


def test_lockstep_times_every_model_on_the_same_work(tiny_llama):
    """One interleaved repeat gives each model its own prefill and decode seconds, wall and CPU."""
    models = {"unpruned": tiny_llama.model, "pruned": tiny_llama.pruned(1, 2).model}
    prompt = prompts(tiny_llama.model, 2, 5)
    spent = lockstep(models, prompt, 3, reverse=True)
    assert set(spent) == set(models)
    assert all(set(times) == {"prefill", "decode", "prefill_cpu", "decode_cpu"} for times in spent.values())
    assert all(times["decode"] > 0 and times["prefill"] > 0 and times["decode_cpu"] >= 0 for times in spent.values())


def test_a_speed_run_times_any_set_as_the_model_without_it(tiny_llama):
    """What a speed run drops is stored as a block's start and n, or any set's layers and sub-layers; the
    timed "pruned" model is the weight-sharing view without exactly that set (its logits, by hand)."""
    sets = [check_block(1, 2, 4), check_layer_set([0, 2], 4), check_layer_set([1], 4, attention=[0], mlp=[2])]
    records = [drop_record(layers) for layers in sets]
    assert records[0] == {"start": 1, "n": 2} and records[2] == {"removed": [1], "attention": [0], "mlp": [2]}
    assert describe_drop(records[2]) == "layers 1 and the attention of 0 and the MLP of 2"
    ids = torch.tensor([[1, 50, 60, 70, 80]])
    for layers, record in zip(sets, records):
        assert dropped_layers(record, 4) == layers
        timed = compared_models(tiny_llama, record, None)["pruned"]
        with torch.no_grad():
            expected = pruned_view(tiny_llama, layers).model(input_ids=ids).logits
            torch.testing.assert_close(timed.model(input_ids=ids).logits, expected)

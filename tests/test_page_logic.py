"""The pure functions the Similarity and Sweep pages draw: labels, captions, the form <-> settings
mappings, the kept result and the block notes. Fast: no Streamlit, and only the tiny model."""

from __future__ import annotations

from datetime import datetime

from explorer.analysis.bootstrap import block_notes, bootstrap, choice_notes, selection_text
from explorer.analysis.similarity import SimilarityResult, similarity_key
from explorer.experiments.sweep import SweepSettings, teaching_preset
from explorer.lm.blocks import check_block
from explorer.lm.layers import decoder_layers, parameter_count
from explorer.state.store import Run
from explorer.surgery.prune import prune_block, removed_parameters
from explorer.views.forms.similarity import SOURCES, kept_result, shown_result, similarity_widgets
from explorer.views.forms.sweep import MODES, WIDGETS, widget_values
from explorer.views.runs import similarity_caption, similarity_label, source_name, sweep_label
from explorer.views.session import page_runs

TOY = SimilarityResult("toy", 4, [[0.5, 0.2, 0.3, 0.1], [0.4, 0.3, 0.2], [0.5, 0.6], [0.9]], samples=1)


def _run(kind: str, settings: dict, run_id: int = 7, status: str = "done", cache_key: str | None = None) -> Run:
    return Run(run_id, kind, cache_key, status, "m", settings, None, None, None, 0.0, 1_700_000_000.0)


def test_source_names_hide_server_paths():
    assert source_name("embedded") == "embedded" and source_name("c4") == "c4"
    assert source_name("/srv/data/notes.txt") == "notes.txt"


def test_similarity_label_and_caption():
    run = _run("similarity", {"source": "/tmp/up/a.jsonl", "samples": 32, "seq_len": 256})
    when = datetime.fromtimestamp(run.updated).strftime("%Y-%m-%d %H:%M")
    assert similarity_label(run) == f"#7 · a.jsonl · 32 × 256 tokens · {when}"
    settings = {"source": "embedded", "samples": 8, "seq_len": 64}
    assert similarity_caption(3, "toy", 4, True, settings) == (
        "Showing similarity run #3: toy · 4 layers · embedded text, 8 samples × 64 tokens · loaded from cache (run #3)")
    assert similarity_caption(3, "toy", 4, False, settings).endswith("computed now (run #3)")


def test_similarity_widgets_follow_the_saved_settings():
    assert similarity_widgets({"source": "c4", "samples": 16, "seq_len": 128, "batch_size": 4}) == {
        "sim_samples": 16, "sim_seq_len": 128, "sim_source": "C4 (online, streamed)", "sim_batch": 4}
    path = similarity_widgets({"source": "/x/y.txt", "samples": 16, "seq_len": 128})
    assert path == {"sim_samples": 16, "sim_seq_len": 128, "sim_source": "Local file path", "sim_path": "/x/y.txt"}
    assert SOURCES[path["sim_source"]] == "path"


def test_kept_result_round_trips_and_belongs_to_one_model():
    session = shown_result(5, TOY, "fp", False, {"source": "embedded", "samples": "8", "seq_len": 64.0, "batch_size": 2})
    assert session["settings"] == {"source": "embedded", "samples": 8, "seq_len": 64}
    run_id, result, from_cache, settings = kept_result(session, "fp")
    assert (run_id, result, from_cache, settings) == (5, TOY, False, session["settings"])
    assert kept_result(session, "other") is None and kept_result(None, "fp") is None


def test_similarity_runs_are_this_models_finished_runs(tiny_llama, store):
    mine = store.create_run("similarity", "m", {}, cache_key=similarity_key(tiny_llama, "abc"), status="done")
    store.create_run("similarity", "m", {}, cache_key="other-model|abc", status="done")
    store.create_run("similarity", "m", {}, cache_key=similarity_key(tiny_llama, "def"), status="running")
    assert [r.id for r in page_runs(store, "similarity", None, fingerprint=tiny_llama.fingerprint, status="done")] == [mine]


def test_removed_parameters_match_pruning(tiny_llama):
    block = check_block(1, 2, tiny_llama.num_layers)
    pruned = prune_block(tiny_llama, 1, 2)
    assert removed_parameters(tiny_llama, block) == pruned.params_before - pruned.params_after
    assert removed_parameters(tiny_llama, block) == 2 * parameter_count(decoder_layers(tiny_llama.model)[0])


def test_block_notes_and_selection_text():
    final = check_block(3, 1, 4, allow_final=True)
    assert block_notes(TOY, None, final)[-1] == (
        "This block removes the final layer 3; the paper keeps it, and pruning it needs the explicit override.")
    inner = check_block(1, 1, 4)
    assert block_notes(TOY, None, inner) == choice_notes(TOY, None, 1)
    assert block_notes(TOY, None, check_block(1, 3, 4, allow_final=True))[:-1] == choice_notes(TOY, None, 3)
    assert selection_text(TOY, None, inner, 2_000_000) == (
        f"Selected: remove {inner.describe(2_000_000)} · angular distance 0.2000")
    assert bootstrap(TOY) is None  # no per-sample data: no interval in the text


def test_sweep_widgets_round_trip():
    preset = teaching_preset()
    values = widget_values(preset)
    assert set(WIDGETS) <= set(values) and values["sw_mode"] == MODES[0]
    assert values["sw_strategies"] == list(preset.strategies)
    chosen = widget_values(SweepSettings(fractions=(0.0, 0.25)))
    assert chosen["sw_mode"] == MODES[1] and chosen["sw_fractions"] == "0, 0.25"


def test_sweep_label():
    assert sweep_label(_run("sweep", {"task": "quiz"}, status="running")) == "#7 · running · quiz"


def test_heal_form_values_round_trip():
    """The Prune & heal form: defaults, a followed run's values and the recipe's give back the same HealConfig."""
    from explorer.surgery.heal import HealConfig
    from explorer.views.preview import HEAL_NUMBERS, HEAL_WIDGETS, heal_config, heal_defaults, heal_widget_values, recipe_caption

    defaults = heal_defaults("cpu", "quiz-capitals")
    assert set(defaults) == set(HEAL_WIDGETS) and {key for key, _, _ in HEAL_NUMBERS} <= set(defaults)
    assert heal_config(defaults, None) == HealConfig(eval_task="quiz-capitals", quantize=False)
    wanted = HealConfig(rank=2, alpha=2, lr=3e-5, steps=7, eval_task="quiz-cities", targets="ffn", quantize=False)
    settings = {"heal": wanted.to_json(), "start": 3, "n": 2, "save": True, "dtype": "fp16"}
    values = heal_widget_values(settings)
    assert (values["ph_start"], values["ph_n"], values["ph_save_model"], values["ph_dtype"]) == (3, 2, True, "fp16")
    recipe = {"warmup_steps": 100, "dropout": 0.05, "row_reason": "the paper's row", "targets": ["up_proj"], "evaluation": "MMLU"}
    assert heal_config(values, None) == wanted
    assert heal_config(values, recipe).warmup_steps == 100
    assert "Defaults are a few-minute CPU demo" in recipe_caption(None) and "the paper's row" in recipe_caption(recipe)


def test_recipe_fills_training_values_only(tiny_llama):
    from explorer.surgery.recipe import recipe_for
    from explorer.views.preview import recipe_widget_values

    values = recipe_widget_values(recipe_for(tiny_llama.model, "meta-llama/Llama-2-7b-hf"))
    assert values["ph_rank"] == 2 and values["ph_alpha"] == 2 and values["ph_targets"] == "ffn" and values["ph_steps"] == 5000
    assert "ph_task" not in values and "ph_limit" not in values  # the evaluation stays the user's

"""The settings dataclasses are the one description of their options: every field reaches the CLI with
its help, values typed on the command line reach the config (and only those), and the pages' widgets
start from the dataclasses' defaults with the same words."""

from __future__ import annotations

import argparse
from dataclasses import fields

import pytest

from explorer.cli import COMMANDS, _heal_config, _sweep_settings, main
from explorer.core.options import SHARED, widget
from explorer.experiments.sweep import SweepSettings, teaching_preset
from explorer.surgery.heal import HealConfig
from explorer.views.forms.sweep import LABELS, WIDGETS, widget_values
from explorer.views.preview import HEAL_LABELS, HEAL_NUMBERS, HEAL_WIDGETS, heal_defaults

TASK_OPTIONS = {"mmlu_dir", "subjects", "shots", "split", "option"}  # what --mmlu-dir ... --option set
TASK_FIELDS = {"eval_options", "task_options"}  # the config fields those options fill


def _parser(command: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=command)
    COMMANDS[command][0](parser)
    return parser


def _actions(command: str) -> dict[str, argparse.Action]:
    return {action.dest: action for action in _parser(command)._actions}


@pytest.mark.parametrize("cls, command", [(HealConfig, "heal"), (SweepSettings, "sweep")])
def test_every_field_has_a_cli_option_with_help(cls, command):
    actions = _actions(command)
    for item in fields(cls):
        assert item.metadata.get("help"), f"{cls.__name__}.{item.name} has no help text"
        if item.name in TASK_FIELDS:
            assert item.metadata.get("cli") == SHARED and TASK_OPTIONS <= set(actions), item.name
        else:
            assert item.name in actions, f"{cls.__name__}.{item.name} has no option on `{command}`"
            assert actions[item.name].help, f"`{command}` option for {item.name} has no help"


def test_task_options_are_the_same_on_eval_sweep_and_heal():
    described = [{dest: (a.option_strings, a.help, a.type) for dest, a in _actions(command).items() if dest in TASK_OPTIONS}
                 for command in ("eval", "sweep", "heal")]
    assert set(described[0]) == TASK_OPTIONS and described[0] == described[1] == described[2]


def test_heal_options_given_override_the_recipe_and_reach_the_config():
    argv = ["--start", "1", "--n", "1", "--seed", "3", "--gradient-checkpointing", "--eval-batch-size", "2",
            "--train-samples", "5", "--no-qlora", "--targets", "ffn", "--text-file", "c4", "--shots", "2", "--eval-task",
            "quiz-capitals", "--option", "seed=1"]
    config, _ = _heal_config(_parser("heal").parse_args(argv), None)
    assert config == HealConfig(seed=3, gradient_checkpointing=True, eval_batch_size=2, train_samples=5, quantize=False,
                                targets="ffn", source="c4", eval_task="quiz-capitals", eval_options={"shots": 2, "seed": 1})
    untouched, _ = _heal_config(_parser("heal").parse_args(["--start", "1", "--n", "1"]), None)
    assert untouched == HealConfig()


def test_sweep_options_given_override_the_preset():
    args = _parser("sweep").parse_args(["--teaching", "--repair-samples", "8", "--samples", "4", "--text-file", "c4",
                                        "--device-map", "auto", "--subjects", "anatomy", "--out", "unused.json"])
    settings = _sweep_settings(args)
    assert (settings.repair_samples, settings.sim_samples, settings.text, settings.device_map) == (8, 4, "c4", "auto")
    assert settings.task_options == {"subjects": "anatomy"} and settings.stride == teaching_preset().stride


def test_bad_fractions_are_one_sentence(tmp_path, capsys):
    assert main(["sweep", "--fractions", "0, x", "--out", str(tmp_path / "o.json")]) == 2
    assert capsys.readouterr().err.strip() == ("error: Fractions must be comma-separated numbers such as 0, 0.1, 0.25 "
                                               "(got '0, x').")


def test_page_defaults_are_the_dataclass_defaults():
    heal, device_dependent = HealConfig(), {"quantize", "eval_task"}
    defaults = heal_defaults("cpu", "quiz-capitals")
    for key, name in HEAL_WIDGETS.items():
        if name not in device_dependent:
            assert defaults[key] == getattr(heal, name), key
    sweep = SweepSettings()
    values = widget_values(sweep)
    for key, name in WIDGETS.items():
        assert values[key] == (list(sweep.strategies) if name == "strategies" else getattr(sweep, name)), key


def test_page_widgets_use_the_fields_words():
    for labels, cls, names in ((HEAL_LABELS, HealConfig, HEAL_WIDGETS), (LABELS, SweepSettings, WIDGETS)):
        for key, name in names.items():
            assert labels[key] == widget(cls, name) and labels[key]["label"] and labels[key]["help"], key
    assert all(options["help"] == HEAL_LABELS[key]["help"] and label == HEAL_LABELS[key]["label"]
               for key, label, options in HEAL_NUMBERS)


def test_classify_options_come_from_its_settings_and_finetuning_config():
    """classify's options are generated like heal's and sweep's: one per field of ClassifySettings and of
    FinetuneConfig (kept apart: both have a batch size), each with the help text the page's widgets show."""
    from explorer.cli import FINETUNE, _classify_arguments
    from explorer.experiments.classify import ClassifySettings
    from explorer.surgery.finetune import FinetuneConfig

    parser = argparse.ArgumentParser(prog="classify")
    _classify_arguments(parser)
    actions = {action.dest: action for action in parser._actions}
    for cls, prefix in ((ClassifySettings, ""), (FinetuneConfig, FINETUNE)):
        for item in fields(cls):
            assert item.metadata.get("help"), f"{cls.__name__}.{item.name} has no help text"
            if item.metadata.get("cli") != SHARED:
                assert actions[prefix + item.name].help, f"{cls.__name__}.{item.name} has no option"
    assert widget(ClassifySettings, "train")["help"] == actions["train"].help.split(" [default")[0]
    args = parser.parse_args(["--strategy", "top-cut,similarity", "--keep", "1,3", "--mode", "icl", "--steps", "2",
                              "--batch-size", "4", "--train-batch-size", "2", "--data-file", "hub", "--out", "x.json"])
    from explorer.core.options import given

    settings = ClassifySettings(**given(ClassifySettings, args), finetune=given(FinetuneConfig, args, prefix=FINETUNE))
    assert settings == ClassifySettings(strategies=("top-cut", "similarity"), keep=(1, 3), modes=("icl",), batch_size=4,
                                        data_file=None, finetune={"steps": 2, "batch_size": 2})

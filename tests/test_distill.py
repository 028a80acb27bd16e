"""Healing toward the unpruned model: the KL loss against a hand computation, a student equal to its
teacher learning nothing, teacher and student holding one copy of their weights, self data made
once and reused, and last-layers training nothing else."""

from __future__ import annotations

import math

import pytest
import torch

from explorer.core.errors import ExplorerError
from explorer.lm.blocks import check_block
from explorer.lm.generate import greedy_continuations
from explorer.lm.layers import decoder_layers, pruned_view, weight_sharing_copy
from explorer.state.cache import cached_self_data
from explorer.surgery.distill import HealLoss, kl_loss, self_prompts
from explorer.surgery.heal import HealConfig, heal, last_layer_modules, prune_and_heal, training_batches, training_model
from explorer.surgery.repair import RepairConfig, prune_or_repair

TINY = dict(steps=4, batch_size=2, seq_len=24, train_samples=2, lr=2e-3, warmup_steps=0, eval_limit=2, val_samples=2,
            eval_every=4, quantize=False)


def hand_kl(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor, temperature: float) -> float:
    """T² x the mean over real positions of sum_v p_v (log p_v - log q_v), by loops in float64."""
    total, count = 0.0, 0
    for b in range(mask.shape[0]):
        for t in range(mask.shape[1]):
            if not mask[b, t]:
                continue
            zs, zt = student[b, t].double() / temperature, teacher[b, t].double() / temperature
            q = torch.exp(zs - zs.max()) / torch.exp(zs - zs.max()).sum()
            p = torch.exp(zt - zt.max()) / torch.exp(zt - zt.max()).sum()
            total += float(sum(p[v] * (math.log(p[v]) - math.log(q[v])) for v in range(len(p))))
            count += 1
    return temperature**2 * total / count


@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_kl_loss_equals_a_hand_computation_over_real_positions(temperature):
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 5, 11) * 3, torch.randn(2, 5, 11) * 3
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])
    teacher[1, 2:] = 1e4  # padding positions hold garbage: they must not count
    got = kl_loss(student, teacher, mask, temperature).item()
    assert got == pytest.approx(hand_kl(student, teacher, mask, temperature), rel=1e-5)
    assert kl_loss(teacher, teacher, mask, temperature).item() == pytest.approx(0.0, abs=1e-6)


def trained_grads(model, loss: HealLoss, batch) -> dict[str, torch.Tensor]:
    model.train()
    model.zero_grad()
    loss(model, *batch).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("targets", ["all-linear", "last-layers"])
def test_a_student_equal_to_its_teacher_has_zero_kl_and_no_gradient(tiny_llama, targets):
    """n = 0: the student is the unpruned model (fresh LoRA adds B A = 0; last-layers clones equal
    their originals), so the KL is 0 and every trained weight's gradient vanishes; the NLL on the
    same batch does move them (the test can fail)."""
    config = HealConfig(**TINY, targets=targets, last_layers=2, dropout=0.0).resolved("cpu")
    student = training_model(pruned_view(tiny_llama, check_block(0, 0, 4)), config)
    batch = training_batches(tiny_llama, config)[0]
    kl = HealLoss("kl", temperature=2.0, teacher=tiny_llama.model)
    assert kl(student, *batch).item() == pytest.approx(0.0, abs=1e-6)
    grads = trained_grads(student, kl, batch)
    assert grads and max(g.abs().max().item() for g in grads.values()) < 1e-6
    nll = trained_grads(student, HealLoss("nll"), batch)
    assert max(g.abs().max().item() for g in nll.values()) > 1e-4


def storage(model) -> dict[int, str]:
    return {p.data_ptr(): name for name, p in model.named_parameters()}


@pytest.mark.parametrize("repair", [None, RepairConfig(samples=8, heldout_samples=2, seq_len=24)])
def test_teacher_and_student_share_every_common_weight(tiny_llama, repair):
    """The student trains on the teacher's own storage: every base weight of the student is a
    weight of the teacher (same data_ptr), except the one down-projection a linear repair folds
    into, and the student holds no other copy."""
    block = check_block(1, 2, 4)
    pruned, fit = prune_or_repair(tiny_llama, block, repair, share=True)
    student = training_model(pruned.loaded, HealConfig(**TINY).resolved("cpu"))
    teacher = storage(tiny_llama.model)
    base = {name: p for name, p in student.named_parameters() if "lora_" not in name}
    private = [name for name, p in base.items() if p.data_ptr() not in teacher]
    assert private == ([f"base_model.model.model.layers.{fit.layer}.mlp.down_proj.base_layer.weight"] if repair else [])
    shared = {teacher[p.data_ptr()] for name, p in base.items() if name not in private}
    kept = {f"model.layers.{old}." for old in block.kept}
    assert all(name.startswith(tuple(kept)) or not name.startswith("model.layers.") for name in shared)
    assert len(shared) == len(base) - len(private)  # one teacher weight per student weight: nothing doubled
    assert teacher.keys() - {p.data_ptr() for p in base.values()} == {
        p.data_ptr() for i in block.removed for p in decoder_layers(tiny_llama.model)[i].parameters()
    } | ({tiny_llama.model.model.layers[fit.layer].mlp.down_proj.weight.data_ptr()} if repair else set())


def test_a_kl_heal_moves_toward_the_teacher_and_leaves_it_untouched(tiny_llama):
    """prune_and_heal with kl on a whole copy of the teacher's weights: the KL to the unpruned
    model falls, and the unpruned model's weights are bit-identical afterwards."""
    loaded = pruned_view(tiny_llama, check_block(0, 0, 4))  # the caller's "own copy" (shares the fixture's weights)
    snapshot = {k: v.clone() for k, v in tiny_llama.model.state_dict().items()}
    config = HealConfig(**{**TINY, "steps": 8, "eval_every": 8}, objective="kl", temperature=2.0)
    batch = training_batches(tiny_llama, config.resolved("cpu"))[0]
    kl = HealLoss("kl", temperature=2.0, teacher=tiny_llama.model)
    pruned_kl = kl(pruned_view(tiny_llama, check_block(1, 1, 4)).model, *batch).item()
    outcome = prune_and_heal(loaded, 1, 1, config)
    assert kl(outcome.healed.model, *batch).item() < 0.8 * pruned_kl
    assert all(torch.equal(v, snapshot[k]) for k, v in tiny_llama.model.state_dict().items())
    assert outcome.healed.num_layers == 3 and outcome.config.objective == "kl"


def test_last_layers_train_only_the_last_k_layers_and_the_head(tiny_llama):
    pruned = prune_or_repair(tiny_llama, check_block(1, 1, 4), None, share=True)[0].loaded  # layers 0, 2, 3 remain
    before = {k: v.clone() for k, v in pruned.model.state_dict().items()}
    config = HealConfig(**TINY, targets="last-layers", last_layers=2)
    assert last_layer_modules(pruned.model, 2) == ["model.layers.1", "model.layers.2", "lm_head"]
    healed = heal(pruned, config).healed.model
    changed = {k for k, v in healed.state_dict().items() if not torch.equal(v, before[k])}
    trained = {k for k in before if k.startswith(("model.layers.1.", "model.layers.2.")) or k in ("lm_head.weight", "model.embed_tokens.weight")}
    assert changed and changed <= trained and any(k.startswith("model.layers.1.") for k in changed)
    assert "lm_head.weight" in changed  # tied: the head IS the input embedding, trained as one matrix
    assert healed.lm_head.weight is healed.model.embed_tokens.weight
    assert all(torch.equal(v, before[k]) for k, v in pruned.model.state_dict().items())  # the input is untouched
    frozen = storage(pruned.model)
    assert all(p.data_ptr() in frozen for k, p in healed.named_parameters() if k not in trained)  # and still shared


def test_greedy_continuations_equal_an_uncached_argmax_loop(tiny_llama):
    prompts = [[1, 50, 60, 70], [1, 80, 90, 100], [1, 5, 6]]
    got = greedy_continuations(tiny_llama, prompts, 5, batch_size=2)
    eos = tiny_llama.tokenizer.eos_token_id
    for prompt, tokens in zip(prompts, got):
        ids, expected = list(prompt), []
        with torch.no_grad():
            for _ in range(5):
                token = int(tiny_llama.model(torch.tensor([ids]), use_cache=False).logits[0, -1].argmax())
                expected.append(token)
                ids.append(token)
                if token == eos:
                    break
        assert tokens == expected


def test_self_data_is_generated_once_and_reused(tiny_llama, store):
    config = HealConfig(**TINY, data="self", prompt_tokens=8).resolved("cpu")
    first = cached_self_data(tiny_llama, config, store)
    again = cached_self_data(tiny_llama, config, store)
    assert first.run_id == again.run_id and first.documents == again.documents
    assert [run.id for run in store.list_runs("self-data")] == [first.run_id]
    assert first.prompt_lengths == [8, 8] and all(len(d) <= 24 for d in first.documents)
    prompts = self_prompts([d for d in first.documents], 8)
    assert all(d[:8] == p for d, p in zip(first.documents, prompts))
    assert first.documents[0][8:] == greedy_continuations(tiny_llama, [first.documents[0][:8]], 16)[0]
    batch = training_batches(tiny_llama, config, first)[0]
    assert (batch[2][:, :8] == -100).all() and (batch[2][:, 8:][batch[1][:, 8:] == 1] != -100).all()
    calls = []

    def counted(loaded, resolved):
        calls.append(1)
        return cached_self_data(loaded, resolved, store)

    outcomes = [prune_and_heal(pruned_view(tiny_llama, check_block(0, 0, 4)), 1, 1, config, make_self_data=counted)
                for _ in range(2)]  # each heal prunes its own view in place; the views share one fingerprint
    runs = [run.id for run in store.list_runs("self-data")]
    assert len(calls) == 2 and len(runs) == 2 and first.run_id in runs  # one run for the fixture, one for the views
    assert outcomes[0].self_data == outcomes[1].self_data and outcomes[0].self_data["run_id"] != first.run_id
    assert outcomes[0].self_data["documents"] == 2
    changed = cached_self_data(tiny_llama, HealConfig(**TINY, data="self", prompt_tokens=6).resolved("cpu"), store)
    assert changed.run_id != first.run_id  # other settings, other data


@pytest.mark.parametrize("settings, message", [
    ({"objective": "kld"}, "Unknown healing objective"),
    ({"temperature": 0.0}, "temperature must be a positive"),
    ({"kl_weight": 1.5}, "KL weight must be in"),
    ({"data": "self", "prompt_tokens": 24}, "prompts shorter than the sequence length"),
    ({"targets": "last-layers", "quantize": True}, "turn QLoRA off"),
    ({"last_layers": 0}, "last layers"),
])
def test_bad_distillation_settings_fail_with_one_message(settings, message):
    with pytest.raises(ExplorerError, match=message):
        HealConfig(**{**TINY, **settings}).check()


def test_kl_without_a_teacher_and_too_many_last_layers_are_refused(tiny_llama):
    pruned = pruned_view(tiny_llama, check_block(1, 1, 4))
    with pytest.raises(ExplorerError, match="needs the unpruned model"):
        heal(pruned, HealConfig(**TINY, objective="kl"))
    with pytest.raises(ExplorerError, match="choose K from 1 to 3"):
        training_model(pruned, HealConfig(**TINY, targets="last-layers", last_layers=4))


def test_weight_sharing_copy_keeps_flags_private(tiny_llama):
    copy_ = weight_sharing_copy(tiny_llama.model)
    for p in copy_.parameters():
        p.requires_grad_(False)
    assert all(p.requires_grad for p in tiny_llama.model.parameters())
    assert storage(copy_).keys() == storage(tiny_llama.model).keys()
    assert copy_.lm_head.weight is copy_.model.embed_tokens.weight  # ties kept


def test_cli_options_reach_the_heal_config_and_the_dry_run_names_the_trained_modules(tiny_llama_dir, capsys):
    import argparse

    from explorer.cli import COMMANDS, _heal_config, main

    parser = argparse.ArgumentParser()
    COMMANDS["heal"][0](parser)
    args = parser.parse_args(["--start", "1", "--n", "1", "--objective", "nll+kl", "--temperature", "2", "--kl-weight", "0.25",
                              "--data", "self", "--prompt-tokens", "16", "--targets", "last-layers", "--last-layers", "2"])
    config, _ = _heal_config(args, None)
    assert config == HealConfig(objective="nll+kl", temperature=2.0, kl_weight=0.25, data="self", prompt_tokens=16,
                                targets="last-layers", last_layers=2)
    assert main(["heal", "--model", str(tiny_llama_dir), "--start", "1", "--n", "1", "--targets", "last-layers",
                 "--last-layers", "2", "--objective", "kl", "--dry-run"]) in (0, None)
    printed = capsys.readouterr().out
    assert '"objective": "kl"' in printed and '"model.layers.2"' in printed and '"lm_head"' in printed


def test_a_sweep_point_heals_by_distillation_from_the_sweep_model(tiny_llama):
    """The sweep's heal axis: each healed point distils from the unpruned model the sweep holds."""
    from explorer.experiments.sweep.measure import eval_config, measure_block
    from explorer.experiments.sweep.settings import SweepSettings

    settings = SweepSettings(model="tiny", strategies=("simple",), fractions=(0.5,), heal_steps=2, heal_objective="kl",
                             limit=2, val_samples=2, seq_len=16, batch_size=4)
    assert eval_config(settings).objective == "kl"
    snapshot = {k: v.clone() for k, v in tiny_llama.model.state_dict().items()}
    measured = measure_block(tiny_llama, check_block(1, 2, 4), settings, lambda: False)
    assert measured["lora"]["val_loss"] != measured["none"]["val_loss"]
    assert all(torch.equal(v, snapshot[k]) for k, v in tiny_llama.model.state_dict().items())
    with pytest.raises(ExplorerError, match="Unknown healing objective"):
        SweepSettings(heal_objective="kld").check()


def test_the_page_form_values_make_the_heal_config():
    from explorer.views.preview import heal_config, heal_defaults, heal_widget_values

    values = {**heal_defaults("cpu", "quiz-capitals"), "ph_objective": "nll+kl", "ph_kl_weight": 0.25, "ph_temperature": 2,
              "ph_data": "self", "ph_prompt_tokens": 16, "ph_targets": "last-layers", "ph_last_layers": 2}
    config = heal_config(values, None)
    assert config == HealConfig(eval_task="quiz-capitals", quantize=False, objective="nll+kl", kl_weight=0.25,
                                temperature=2.0, data="self", prompt_tokens=16, targets="last-layers", last_layers=2)
    assert isinstance(config.temperature, float) and isinstance(config.last_layers, int)
    shown = heal_widget_values({"heal": config.to_json(), "start": 1, "n": 2})  # a followed run shows its choices
    assert (shown["ph_objective"], shown["ph_data"], shown["ph_targets"]) == ("nll+kl", "self", "last-layers")


def test_the_prune_and_heal_page_draws_the_objective_panel(embedded):
    from streamlit.testing.v1 import AppTest

    from explorer.core.options import widget

    at = AppTest.from_file("../app.py", default_timeout=300)
    at.run()
    at.switch_page("pages/prune_heal.py").run()
    for key, value in (("ph_objective", "kl"), ("ph_data", "self"), ("ph_targets", "last-layers")):
        at.radio(key=key).set_value(value).run()
    assert not at.exception
    assert at.radio(key="ph_objective").label == widget(HealConfig, "objective")["label"]
    assert at.radio(key="ph_objective").value == "kl" and at.radio(key="ph_targets").value == "last-layers"
    assert (at.number_input(key="ph_temperature").value, at.number_input(key="ph_last_layers").value) == (1.0, 3)

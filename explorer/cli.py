"""`python -m explorer COMMAND ...`: every capability of the app without Streamlit.

Each command is a `(add_arguments, run)` pair in COMMANDS. Failures a user caused exit 2
with one line on stderr (no traceback); results go to --out as JSON.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Callable

import torch

from explorer.analysis.bootstrap import DRAWS, SEED, bootstrap, result_json, summary
from explorer.analysis.strategies import choose_layers, get_strategy, needs_of, strategies_help
from explorer.core.errors import ExplorerError
from explorer.core.files import write_json
from explorer.core.options import add_options, given
from explorer.core.threads import configure
from explorer.evaluation.accuracy import with_n
from explorer.evaluation.agreement import agreement, describe, predictions
from explorer.evaluation.evaluate import run_task, validation_loss
from explorer.evaluation.questions import check_limit
from explorer.evaluation.speed import SpeedSettings
from explorer.evaluation.tasks import get_task
from explorer.experiments.classify import ClassifySettings, describe_point
from explorer.experiments.classify import execute as execute_classify
from explorer.experiments.heal import heal_ranks, heal_run
from explorer.experiments.speed import execute as execute_speed
from explorer.experiments.speed import speed_settings
from explorer.experiments.sweep import SweepSettings, describe_verdict, start_sweep, teaching_preset
from explorer.experiments.sweep import describe_point as describe_sweep_point
from explorer.experiments.sweep import execute as execute_sweep
from explorer.experiments.sweep.distributed import ray_available
from explorer.export.folder import save_prune
from explorer.export.gguf import (
    FLOAT_TYPES,
    GGUFExport,
    check_convertible,
    check_gguf_out,
    convert_model,
    export_gguf,
    gguf_source,
    prune_gguf,
    tokenizer_gguf,
)
from explorer.export.hub import check_hub_ready, check_repo_id, push, push_plan
from explorer.export.llamacpp import llama_quantize_command
from explorer.jobs import cancel, run_job
from explorer.lm.blocks import check_block, check_layer_set, parse_indices
from explorer.lm.data import check_settings, split_documents
from explorer.lm.models import check_device, load_config, load_model, model_skeleton
from explorer.lm.save import DTYPES
from explorer.lm.stream import open_for_analysis
from explorer.lm.sublayers import FORM
from explorer.state.cache import (
    cached_distances,
    cached_reference,
    cached_sublayers,
    heatmap_origin,
    stored_heatmap,
    strategy_context,
)
from explorer.state.store import Store
from explorer.surgery.finetune import FinetuneConfig
from explorer.surgery.heal import HealConfig, check_heal_size, target_modules
from explorer.surgery.parallel import data_parallel
from explorer.surgery.prune import prune_block
from explorer.surgery.recipe import recipe_for
from explorer.surgery.repair import REPAIRS, RepairConfig, prune_or_repair, repair_record
from explorer.views.speed import speed_lines

FINETUNE = "finetune_"  # classify's finetuning options parse into their own names (both classes have a batch_size)


def _check_out(path: str, folder: bool = False, model: str | None = None) -> None:
    """Fail before any model loads when --out cannot be written, instead of after the work.
    A JSON file is written in its parent folder; a model folder is written beside itself (in a
    scratch folder) and moved in, so the parent must take new files either way. A model folder
    is never written over the model it comes from (`model`), nor inside it."""
    out = Path(path).expanduser()
    source = Path(model).expanduser() if model else None
    if source is not None and source.exists():
        source_folder = (source if source.is_dir() else source.parent).resolve()
        if out.resolve() == source_folder or out.resolve().is_relative_to(source_folder):
            raise ExplorerError(f"--out {path} is the --model folder {model}{' or inside it' if out.resolve() != source_folder else ''}: "
                                "writing there would overwrite the model being pruned; give another folder.")
    try:
        if out.exists() and out.is_dir() != folder:
            raise OSError(errno.EEXIST, f"{out} is a {'folder' if out.is_dir() else 'file'} already")
        existing = next(p for p in (out.parent, *out.parent.parents) if p.exists())
        if not existing.is_dir():
            raise OSError(errno.ENOTDIR, f"{existing} is a file, not a folder")
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out.parent):
            pass
    except OSError as exc:
        what = "a folder for the model" if folder else "a JSON file"
        raise ExplorerError(f"Cannot write --out {path} ({exc.strerror or exc}): give {what} in a writable place; "
                            "nothing was computed.") from exc


def _progress(label: str) -> Callable[[int, int], None]:
    def report(done: int, total: int) -> None:
        print(f"{label}: {done}/{total}", file=sys.stderr, flush=True)

    return report


def _model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="embedded", help="'embedded', a Hugging Face id, a folder or a .gguf file")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--load-in-4bit", action="store_true", help="bitsandbytes nf4 weights")
    parser.add_argument("--trust-remote-code", action="store_true", help="run the model's own code from the hub (models you trust only)")


def _load(args: argparse.Namespace):
    return load_model(args.model, device=args.device, load_in_4bit=args.load_in_4bit, trust_remote_code=args.trust_remote_code)


def _stream_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stream", action="store_true",
                        help="run the checkpoint layer by layer, never holding it whole (automatic when it does not fit)")
    parser.add_argument("--activations", default="auto", choices=("auto", "device", "cpu", "disk"),
                        help="where a streamed pass keeps every token's hidden states between layers (auto: where they fit)")


def _load_for_analysis(args: argparse.Namespace):
    """The model in memory, or streamed layer by layer (explorer.lm.stream) with a line saying why."""
    return open_for_analysis(
        args.model, args.stream, device=args.device, log=lambda line: print(line, file=sys.stderr, flush=True),
        spill=args.activations, load_in_4bit=args.load_in_4bit, trust_remote_code=args.trust_remote_code,
    )


def _streamed_similarity_arguments(parser: argparse.ArgumentParser) -> None:
    _similarity_arguments(parser)
    _stream_arguments(parser)


def _text_arguments(parser: argparse.ArgumentParser, samples: int, split: str) -> None:
    """The text a pass reads: --text-file, --samples of it (`split` documents), --seq-len, --batch-size, and --out."""
    parser.add_argument("--text-file", default="embedded", help=f"'embedded', 'c4', or a .txt/.jsonl/.parquet file ({split} split)")
    parser.add_argument("--samples", type=int, default=samples)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--out", required=True)


def _similarity_arguments(parser: argparse.ArgumentParser) -> None:
    _model_arguments(parser)
    _text_arguments(parser, samples=64, split="train")


def _similarity(args: argparse.Namespace) -> None:
    check_settings(args.samples, args.seq_len, args.batch_size)
    if args.bootstrap < 0:
        raise ExplorerError(f"--bootstrap takes a number of resamples, 0 for none (got {args.bootstrap}).")
    # A missing, unreadable or empty file fails in seconds, before the model loads.
    if next(iter(split_documents(args.text_file, "train")), None) is None:
        raise ExplorerError(f"No text in {args.text_file}: the file holds no documents.")
    _check_out(args.out)

    loaded = _load_for_analysis(args)
    _, result, _ = cached_distances(loaded, args.text_file, args.samples, args.seq_len, args.batch_size,
                                    progress=_progress(loaded.progress_unit))
    boot = bootstrap(result, args.bootstrap, args.seed)
    write_json(args.out, result_json(result, boot))
    print(summary(result, boot))


def _sublayers(args: argparse.Namespace) -> None:
    """Angular distance and Block Influence of every attention and MLP sub-layer, as JSON to --out."""
    check_settings(args.samples, args.seq_len, args.batch_size)
    _check_out(args.out)
    loaded = _load(args)
    _, scores, _ = cached_sublayers(loaded, args.text_file, args.samples, args.seq_len, args.batch_size,
                                    progress=_progress("samples"))
    write_json(args.out, scores.to_json())
    quarter = max(1, scores.num_layers // 4)
    for kind, label in (("attention", "attention"), ("mlp", "MLP")):
        print(f"{label} sub-layers changing the stream least (lowest Block Influence; {kind}-drop's first {quarter}): "
              f"{', '.join(map(str, scores.lowest(kind, quarter)))}")


def _similarity_command_arguments(parser: argparse.ArgumentParser) -> None:
    _streamed_similarity_arguments(parser)
    parser.add_argument("--bootstrap", type=int, default=DRAWS, metavar="B",
                        help="resamples of the calibration samples for intervals and stability (0: none); no extra forward pass")
    parser.add_argument("--seed", type=int, default=SEED, help="seed of the bootstrap resampling")


def _prune_arguments(parser: argparse.ArgumentParser) -> None:
    _similarity_arguments(parser)  # what a strategy needs (distances, Block Influence, ...) is computed (or reused) on this text
    parser.add_argument("--start", type=int, default=None, help="first layer of the block (or use --strategy or --layers)")
    parser.add_argument("--n", type=int, default=None,
                        help="how many to remove with --start or --strategy: layers, or sub-layers for attention-drop and mlp-drop")
    parser.add_argument("--strategy", default=None, help=f"choose what to remove: {strategies_help()}")
    parser.add_argument("--layers", default=None, metavar="LIST", help="remove exactly these layers, e.g. 3,7-9 (any set, no --n)")
    parser.add_argument("--attention", default=None, metavar="LIST",
                        help="skip these layers' attention sub-layers (saved with zero weights; see run.json)")
    parser.add_argument("--mlp", default=None, metavar="LIST", help="skip these layers' MLP sub-layers (saved with zero weights)")
    parser.add_argument("--similarity", default=None, metavar="RUN_ID|FILE",
                        help="the similarity strategy reuses this heatmap (a similarity run id, or the JSON `similarity --out` "
                             "wrote) instead of computing one from --text-file/--samples/--seq-len")
    parser.add_argument("--allow-final", action="store_true", help="allow removing the final layer (the paper keeps it)")
    _dtype_argument(parser)
    _repair_arguments(parser)
    _export_arguments(parser)


def _export_arguments(parser: argparse.ArgumentParser) -> None:
    """--gguf and --push-to-hub: the pruned model beyond the folder (explorer.export.gguf, explorer.export.hub)."""
    parser.add_argument("--gguf", default=None, metavar="OUT.gguf",
                        help="also write a GGUF: a GGUF model pruned directly (kept tensors copied, still quantized), "
                             "else converted from the weights (llama, mistral, qwen2, qwen3)")
    parser.add_argument("--gguf-type", choices=FLOAT_TYPES, default="f16",
                        help="weight type of a converted GGUF (a GGUF pruned directly keeps its own types)")
    parser.add_argument("--push-to-hub", default=None, metavar="REPO",
                        help="upload the folder (and --gguf) to this Hugging Face model repo (needs a token: hf auth login)")


def _check_export(args: argparse.Namespace, weights_change: bool) -> str | None:
    """Before any model loads: --out and --gguf never overwrite the model they come from, a GGUF that
    must be converted (the weights change, or the model is no GGUF) is of a covered architecture (read
    from its config), and a push can work (the hub is on, reachable and a token is set). Returns the
    token to push with."""
    source = Path(args.model).expanduser()
    out = getattr(args, "out", None)
    if out and source.exists() and Path(out).expanduser().resolve() == source.resolve():
        raise ExplorerError(f"--out {out} is the model being exported itself; write to another folder.")
    if args.gguf:
        check_gguf_out(args.gguf, [gguf_source(args.model), source if source.is_file() else None])
        if weights_change or gguf_source(args.model) is None:
            check_convertible(load_config(args.model, args.trust_remote_code)[0])
    if args.push_to_hub:
        check_repo_id(args.push_to_hub)
        return check_hub_ready()
    return None


def _publish(args: argparse.Namespace, token: str | None, folder: Path | str | None, gguf: str | None = None) -> None:
    """Push the exported folder (and a GGUF written outside it) when --push-to-hub was given."""
    if not args.push_to_hub:
        return
    plan = push_plan(args.push_to_hub, folder, (gguf,) if gguf else ())
    print(plan.describe(), file=sys.stderr, flush=True)
    print(f"pushed to {push(plan, token)}")


def _repair_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repair", choices=REPAIRS, default="none",
                        help="linear: fit a map for the block on the calibration text and fold it into the layer before (explorer.surgery.repair)")
    add_options(parser, RepairConfig, ("ridge",))


def _repair_config(args: argparse.Namespace, source: str | None, samples: int | None = None):
    """The linear repair's settings from the command's own text options, checked before the model loads; None for --repair none."""
    if args.repair != "linear":
        return None
    chosen = {"source": source, "seq_len": args.seq_len, "batch_size": args.batch_size, "ridge": args.ridge,
              "samples": samples}  # heal leaves unset options None: the repair's defaults apply
    config = RepairConfig(**{key: value for key, value in chosen.items() if value is not None})
    config.check()
    return config


def _dtype_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                        help="type of the saved weights (default: as loaded; bf16 halves fp32)")


def _prune_choice(args: argparse.Namespace) -> str:
    """Which way the command names what to remove: "start", "strategy" or "set"; one sentence when
    it names none or several, or --n is missing or extra."""
    given = {"start": args.start is not None, "strategy": args.strategy is not None,
             "set": any(v is not None for v in (args.layers, args.attention, args.mlp))}
    if sum(given.values()) != 1:
        raise ExplorerError("Give one of --start (a block's first layer, with --n), --strategy (with --n) or "
                            "--layers / --attention / --mlp (any set).")
    choice = next(name for name, present in given.items() if present)
    if (args.n is None) != (choice == "set"):
        raise ExplorerError("--n goes with --start and --strategy, not with --layers / --attention / --mlp." if choice == "set"
                            else f"--{choice} needs --n, how many to remove.")
    if args.strategy is not None:
        get_strategy(args.strategy)  # an unknown name fails before the model loads
    return choice


def _prune(args: argparse.Namespace) -> None:
    """Prune a block or any set of layers (or sub-layers) and write the model folder, its run.json
    and a mergekit passthrough YAML."""
    choice = _prune_choice(args)
    strategies = [args.strategy] if choice == "strategy" and args.n > 0 else []
    if args.similarity is not None and args.strategy != "similarity":
        raise ExplorerError("--similarity gives the heatmap of --strategy similarity: add --strategy similarity.")
    reused = stored_heatmap(args.similarity, Store()) if strategies and args.similarity is not None else None
    if strategies and needs_of(strategies) and reused is None:
        check_settings(args.samples, args.seq_len, args.batch_size)
    _check_out(args.out, folder=True, model=args.model)
    token = _check_export(args, weights_change=args.repair != "none")
    repair = _repair_config(args, args.text_file, args.samples)
    loaded = _load(args)
    num_layers = loaded.num_layers
    similarity, origin = None, None
    if reused is not None:
        similarity, origin = reused
        if (similarity.model, similarity.num_layers) != (loaded.name, num_layers):
            raise ExplorerError(f"The heatmap {args.similarity} was computed on {similarity.model} ({similarity.num_layers} "
                                f"layers), not on {loaded.name} ({num_layers} layers): give one of this model.")
    elif "similarity" in strategies:
        run_id, similarity, hit = cached_distances(
            loaded, args.text_file, args.samples, args.seq_len, args.batch_size, progress=_progress("samples")
        )
        origin = heatmap_origin(similarity, f"run #{run_id}{', from the store' if hit else ''}")
    if choice == "strategy":
        others = [name for name in strategies if name != "similarity"]  # the heatmap is fetched above, with its origin
        context = strategy_context(loaded, others, args.text_file, args.samples, args.seq_len, args.batch_size,
                                   phase=lambda text: print(f"computing {text}", file=sys.stderr, flush=True))
        context.similarity = similarity
        block = choose_layers(args.strategy, args.n, context)
    elif choice == "start":
        block = check_block(args.start, args.n, num_layers, args.allow_final)
    else:
        block = check_layer_set(parse_indices(args.layers or ""), num_layers, args.allow_final,
                                parse_indices(args.attention or "", "--attention"), parse_indices(args.mlp or "", "--mlp"))
    if block.includes_final:
        print(f"warning: removing the final layer {num_layers - 1}; the paper shows it must be kept.", file=sys.stderr)
    result, fit = prune_or_repair(loaded, block, repair, inplace=True)
    if similarity is not None:
        print(f"block chosen by the similarity heatmap of {origin}", file=sys.stderr)
    calibration = {"source": args.text_file, "samples": args.samples, "seq_len": args.seq_len}
    extra = {"strategy": args.strategy or "manual",
             "calibration": calibration if strategies and needs_of(strategies) and reused is None else None,
             "similarity": {"source": similarity.source, "samples": similarity.samples, "seq_len": similarity.seq_len,
                            "chosen_by": origin} if similarity is not None else None,
             "repair": repair_record(repair, fit) if repair else {"method": "none"}}
    if args.gguf:  # before the folder, so its run.json and model card say what the GGUF holds

        extra["gguf"] = export_gguf(args.model, args.gguf, block, result.loaded, repair is not None, args.gguf_type).to_json()
    out = save_prune(result, args.out, args.model, extra, args.dtype)
    print(
        f"pruned {block.describe(result.removed_params)}: {result.params_before / 1e6:.1f}M -> "
        f"{result.params_after / 1e6:.1f}M parameters, saved to {out}"
    )
    if block.sublayers:
        print(f"sub-layers are skipped in memory; the saved model holds them with zero weights ({FORM}): exact, not faster")
    if fit is not None:
        print(f"linear repair folded into layer {fit.layer}: held-out relative residual {fit.heldout_residual:.3f} "
              f"(unrepaired {fit.heldout_residual_unrepaired:.3f})")
    _print_gguf(extra.get("gguf"), args.gguf, args.model, block)
    _publish(args, token, out, args.gguf)


def _print_gguf(exported: dict | None, path: str | None, model_id: str, block) -> None:
    """The GGUF written, and the llama.cpp command line for the same removal."""
    if exported:
        print(f"{GGUFExport(**exported).describe()}, saved to {path}")
    print(llama_quantize_command(model_id, block).rstrip())


def _export_gguf_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="embedded", help="'embedded' or a .gguf file (pruned directly), or a saved, "
                                                            "repaired or healed folder or a Hugging Face id (converted)")
    parser.add_argument("--start", type=int, default=0, help="first layer of the block to remove")
    parser.add_argument("--n", type=int, default=0, help="number of layers to remove (0: convert as it is)")
    parser.add_argument("--allow-final", action="store_true", help="allow removing the final layer (the paper keeps it)")
    parser.add_argument("--type", choices=FLOAT_TYPES, default="f16", dest="gguf_type",
                        help="weight type of a converted GGUF (a GGUF pruned directly keeps its own types)")
    parser.add_argument("--device", default="cpu", help="where a converted model is loaded (default: cpu)")
    parser.add_argument("--trust-remote-code", action="store_true", help="run the model's own code from the hub (models you trust only)")
    parser.add_argument("--push-to-hub", default=None, metavar="REPO", help="upload the GGUF to this Hugging Face model repo")
    parser.add_argument("--out", required=True, dest="gguf", metavar="OUT.gguf", help="the GGUF file to write")


def _export_gguf(args: argparse.Namespace) -> None:
    """A GGUF of a model without a block: copied from a GGUF source in seconds (nothing loaded or
    dequantized), or converted from a folder's or hub model's weights (a healed folder, say)."""

    token = _check_export(args, weights_change=False)
    if source := gguf_source(args.model):
        exported = prune_gguf(source, args.gguf, range(args.start, args.start + args.n), args.allow_final)
    else:
        loaded = load_model(args.model, device=args.device, dtype=torch.float32, trust_remote_code=args.trust_remote_code)
        block = check_block(args.start, args.n, loaded.num_layers, args.allow_final)
        if block.n:
            loaded = prune_block(loaded, block.start, block.n, allow_final=True, inplace=True).loaded
        exported = convert_model(loaded, args.gguf, args.gguf_type, tokenizer_gguf(args.model))
    print(f"{exported.describe()}, saved to {args.gguf}")
    _publish(args, token, None, args.gguf)


def _eval_arguments(parser: argparse.ArgumentParser) -> None:
    _model_arguments(parser)
    parser.add_argument("--task", default="mmlu", help="a registered task: mmlu, mmlu-cloze, a quiz, or one scored by "
                        "generation (quiz-capitals-gen, arith, arith-cot, gsm8k, mmlu-gen)")
    _task_arguments(parser)
    parser.add_argument("--limit", type=int, default=None, help="score at most this many questions")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--reference", default=None,
                        help="the unpruned model to compare answers with (default: the 'model' in a pruned folder's run.json)")
    parser.add_argument("--out", required=True)
    _stream_arguments(parser)
    _drop_arguments(parser)


def _drop_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--drop", default=None, metavar="START:N",
                        help="score the model with decoder layers [START, START+N) removed (streamed: skipped)")


def _drop_block(drop: str | None) -> tuple[int, int] | None:
    """--drop's (start, n), read before any model loads; whether it fits is checked against the model."""
    if drop is None:
        return None
    start, sep, n = drop.partition(":")
    if not sep or not start.isdigit() or not n.isdigit():
        raise ExplorerError(f"--drop takes START:N (e.g. 20:8), got '{drop}'.")
    return int(start), int(n)


def _dropped(loaded, drop: str | None):
    """The model without the --drop block (a weight-sharing view in memory, skipped layers when streamed)."""
    block = _drop_block(drop)
    return loaded if block is None else loaded.pruned(*block, allow_final=True)


def _loss_arguments(parser: argparse.ArgumentParser) -> None:
    _model_arguments(parser)
    _stream_arguments(parser)
    _drop_arguments(parser)
    _text_arguments(parser, samples=32, split="held-out")


def _loss(args: argparse.Namespace) -> None:
    """Validation loss (nats per token) on held-out documents, optionally with a block dropped."""
    check_settings(args.samples, args.seq_len, args.batch_size)
    _check_out(args.out)
    loaded = _dropped(_load_for_analysis(args), args.drop)
    loss = validation_loss(loaded, args.text_file, args.samples, args.seq_len, args.batch_size)
    write_json(args.out, {"model": loaded.name, "loss": loss, "source": args.text_file, "samples": args.samples,
                           "seq_len": args.seq_len, "drop": args.drop})
    print(f"validation loss {loss:.4f}")


def _reference_model(args: argparse.Namespace) -> str | None:
    """--reference, or the source model recorded in a saved pruned/healed folder's run.json."""
    if args.reference:
        return args.reference
    record = Path(args.model) / "run.json"
    try:
        return json.loads(record.read_text()).get("model") if record.is_file() else None
    except (OSError, ValueError):
        return None


def _task_arguments(parser: argparse.ArgumentParser) -> None:
    """The task's options, the same on eval, sweep and heal (its evaluation task); `_task_options` reads them."""
    group = parser.add_argument_group("task options")
    group.add_argument("--mmlu-dir", default=None, help="local MMLU CSVs (dev/, test/, val/) for the mmlu tasks; default: cais/mmlu online")
    group.add_argument("--subjects", default=None, help="comma-separated MMLU subjects (default: all)")
    group.add_argument("--shots", type=int, default=None, help="solved examples before each question")
    group.add_argument("--split", default=None, help="test (default), val or dev")
    group.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="any other task option")


def _task_options(args: argparse.Namespace) -> dict:
    """Only the options given reach the task, so a task that takes none of them still builds."""
    options = {key: getattr(args, key) for key in ("mmlu_dir", "subjects", "shots", "split") if getattr(args, key) is not None}
    for item in args.option:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ExplorerError(f"--option takes KEY=VALUE, got '{item}'.")
        options[key.replace("-", "_")] = int(value) if value.lstrip("-").isdigit() else value
    return options


def _eval(args: argparse.Namespace) -> None:
    """Score one task; the task (data, subjects, options) is checked before the model loads."""
    check_limit(args.limit)
    check_settings(1, 2, args.batch_size)
    options = _task_options(args)
    task = get_task(args.task, **options)
    _check_out(args.out)
    report = run_task(_dropped(_load_for_analysis(args), args.drop), task, limit=args.limit, batch_size=args.batch_size)
    data = report.to_json()
    if reference := _reference_model(args):
        unpruned = load_model(reference, device=args.device, trust_remote_code=args.trust_remote_code)
        same = agreement(predictions(report.per_question),
                         cached_reference(unpruned, args.task, args.limit, args.batch_size, options, Store()))
        data.update(same, reference=reference)
        print(report.summary() + describe(same))
    else:
        print(report.summary())
    for line in generated_lines(report.per_question):
        print(line)
    write_json(args.out, data)


def _speed_arguments(parser: argparse.ArgumentParser) -> None:
    _model_arguments(parser)
    parser.add_argument("--drop", default=None, metavar="START:N",
                        help="compare the model with itself without decoder layers [START, START+N)")
    parser.add_argument("--reference", default=None,
                        help="the model to compare with (default: for a pruned folder, the 'model' in its run.json)")
    add_options(parser, SpeedSettings)
    parser.add_argument("--out", required=True)


def _speed(args: argparse.Namespace) -> None:
    """Prefill latency, decode throughput and memory of the model, timed in this process interleaved
    with what it is compared with (explorer.evaluation.speed), as a stored "speed" run."""
    speed = SpeedSettings(**given(SpeedSettings, args))
    speed.check()
    drop = _drop_block(args.drop)
    reference = args.reference if drop is not None else _reference_model(args)
    model = {"source": args.model, "device": args.device, "load_in_4bit": args.load_in_4bit, "trust_remote_code": args.trust_remote_code}
    settings = speed_settings(model, speed, None if drop is None else {"start": drop[0], "n": drop[1]}, reference)
    _check_out(args.out)
    store = Store()
    run_id = store.create_run("speed", args.model, settings)
    result = _run_in_foreground(store, run_id, execute_speed,
                                lambda event: print(event.get("phase", event), file=sys.stderr, flush=True))
    write_json(args.out, {"run_id": run_id, **result})
    print("\n".join(speed_lines(result)))


SHOWN_OUTPUTS = 10  # generated answers an eval prints; --out holds every one


def generated_lines(results: list) -> list[str]:
    """A generation task's first answers as the model wrote them, one line each (the JSON has all):
    '✓ quiz-capitals/17: ' Paris' -> paris (gold paris)'."""
    written = [r for r in results if r.output is not None]
    lines = [f"{'✓' if r.correct else '✗'} {r.id}: {r.output!r} -> {r.pred or '(nothing)'} (gold {r.gold})"
             for r in written[:SHOWN_OUTPUTS]]
    if len(written) > SHOWN_OUTPUTS:
        lines.append(f"... {len(written) - SHOWN_OUTPUTS} more in the --out file")
    return lines


def _sweep_arguments(parser: argparse.ArgumentParser) -> None:
    _model_arguments(parser)
    parser.add_argument("--teaching", action="store_true", help="the teaching preset: the embedded model on CPU in a few minutes (explorer.experiments.sweep.teaching_preset)")
    add_options(parser, SweepSettings)  # one option per setting; the model's are _model_arguments', the task's _task_arguments'
    _task_arguments(parser)
    parser.add_argument("--executor", choices=("local", "ray"), default="local",
                        help="local: one point after another here; ray: points in parallel on Ray workers (requirements-distributed.txt)")
    parser.add_argument("--ray-address", default=None, help="a running Ray cluster (default: start a local instance on loopback)")
    parser.add_argument("--out", required=True)


def _sweep_settings(args: argparse.Namespace):
    """The sweep's settings: the options given on the command line over the defaults, or over
    the teaching preset with --teaching (so an option left out never overrides the preset)."""
    chosen = given(SweepSettings, args, task_options=_task_options(args))
    return teaching_preset(**chosen) if args.teaching else SweepSettings(**chosen)


def _run_in_foreground(store, run_id: int, execute: Callable, report: Callable[[dict], None]) -> dict:
    """`execute(store, run_id, report, should_stop)` in this process, inside the store's lifecycle
    (Store.running): cancelled on Ctrl-C or when a page cancels the run (it stops at the next
    point), failed on any other error (the points so far stay), done with its result."""
    with store.running(run_id) as run:
        run.result = execute(store, run_id, report, run.cancelled)
    return run.result


def _sweep(args: argparse.Namespace) -> None:
    """Run a sweep in the foreground as a store run (Store.running records its outcome; no pid, so
    a page's job reaper leaves it alone); a rerun with the same settings resumes it."""
    if args.ray_address and args.executor != "ray":
        raise ExplorerError("--ray-address needs --executor ray.")
    settings = _sweep_settings(args)
    settings.check()
    _check_out(args.out)
    store = Store()
    executor = None
    if args.executor == "ray":
        if not ray_available():
            raise ExplorerError("Ray is not installed: pip install -r requirements-distributed.txt, or use --executor local.")
        executor = {"executor": "ray", "ray_address": args.ray_address}
    run_id = start_sweep(store, settings, executor=executor)

    def report(event: dict) -> None:
        print(describe_sweep_point(event) if event.get("kind") == "point" else event.get("phase", event), file=sys.stderr, flush=True)

    result = _run_in_foreground(store, run_id, execute_sweep, report)
    for curve, fraction in result["first_at_chance"].items():
        print(f"{curve}: accuracy first reaches chance at {'—' if fraction is None else f'{fraction:.0%}'} of layers dropped")
    for curve, fraction in result.get("gen_first_at_chance", {}).items():
        print(f"{curve}: accuracy by generation ({settings.gen_task}) first reaches its floor (no right answer "
              f"within its 95% interval) at {'—' if fraction is None else f'{fraction:.0%}'} of layers dropped")
    for verdict in result.get("repair_verdicts", []):
        if verdict["hurts"]:
            print(f"the repair HURTS on {settings.text}: {describe_verdict(verdict)}")
    try:
        write_json(args.out, {"run_id": run_id, "settings": settings.to_json(), **result})
    except ExplorerError as exc:  # a full disk or a read-only folder: the points are safe in the store
        raise ExplorerError(f"{exc} The sweep is saved as run {run_id}: export it from the Runs page or rerun with "
                            "another --out (it resumes at once).") from exc


def _heal_arguments(parser: argparse.ArgumentParser) -> None:
    _model_arguments(parser)
    parser.add_argument("--start", type=int, required=True, help="first layer of the block to remove")
    parser.add_argument("--n", type=int, required=True, help="number of layers to remove")
    parser.add_argument("--allow-final", action="store_true", help="allow removing the final layer (the paper keeps it)")
    parser.add_argument("--recipe", choices=["paper"], default=None,
                        help="start from the paper's recipe for this model (explorer.surgery.recipe); options given override it")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved settings as JSON and exit (no weights read)")
    # One option per HealConfig field, each None unless given: those given override --recipe's values and the rest keep them.
    add_options(parser, HealConfig)
    _task_arguments(parser)  # the options of --eval-task
    _repair_arguments(parser)  # fitted on --text-file's calibration documents, before healing
    parser.add_argument("--out", default=None, help="folder for the merged model, run.json, mergekit.yaml and model card "
                                                    "(without it nothing is saved: the metrics are printed)")
    _dtype_argument(parser)
    _export_arguments(parser)


def _print_heal_event(event: dict, steps: int) -> None:
    """One progress line per event, on stderr like the other commands' progress."""
    if event["kind"] == "train":
        line = f"step {event['step']}/{steps}: train loss {event['train_loss']:.4f}, lr {event['lr']:.2e}, {event['tokens_per_s']:.0f} tokens/s"
    elif event["kind"] in ("eval", "reference"):
        label = "before pruning" if event["kind"] == "reference" else "healed (merged)" if event.get("merged") else f"eval at step {event['step']}"
        accuracy = with_n(f"{event['task']} accuracy {event['accuracy']:.2f} [{event['ci_low']:.2f}, {event['ci_high']:.2f}]", event)
        line = f"{label}: val loss {event['val_loss']:.4f}, {accuracy} (chance {event['chance']:.2f}){describe(event)}"
    else:
        line = event.get("phase", str(event))
    print(line, file=sys.stderr, flush=True)


def _heal_config(args: argparse.Namespace, model) -> tuple[HealConfig, dict]:
    """The settings: the options given over the demo defaults, or over the paper's recipe for
    `model` (a loaded model or a weightless skeleton); and what to report about the recipe."""


    base, about = HealConfig(), {}
    if args.recipe == "paper":
        recipe = recipe_for(model, args.model)
        base = recipe.heal_config(base)
        about = {"recipe": "paper", "table_row": recipe.table_row, "row_reason": recipe.row_reason,
                 "evaluation": recipe.evaluation}
    config = replace(base, **given(HealConfig, args, eval_options=_task_options(args)))
    config.check()
    return config, about


def _heal(args: argparse.Namespace) -> None:
    """Prune and heal in the foreground as a store run (the job runner's code path, also printing).

    Under `accelerate launch --multi_gpu --num_processes K` each process runs this: they train data-parallel
    (explorer.surgery.parallel) and only the main process creates the run, writes and prints."""
    skeleton = None
    if args.recipe or args.dry_run:  # the recipe depends on the architecture: read from the config, no weights

        skeleton, _ = model_skeleton(args.model, args.trust_remote_code)
    check_heal_size(args.n)
    config, about = _heal_config(args, skeleton)  # bad settings fail before the model loads
    if args.dry_run:
        settings = {key: getattr(config, key) for key in ("rank", "alpha", "dropout", "lr", "warmup_steps", "steps",
                                                          "batch_size", "seq_len", "quantize", "source", "objective", "data")}
        print(json.dumps({**settings, "target_choice": config.targets,
                          "targets": target_modules(skeleton, config.targets, config.last_layers), **about}, indent=1))
        return
    if args.out is not None:
        _check_out(args.out, folder=True, model=args.model)
    elif args.gguf or args.push_to_hub:
        raise ExplorerError("--gguf and --push-to-hub export the healed model's folder: give --out too.")
    token = _check_export(args, weights_change=True)
    repair = _repair_config(args, args.source)
    ranks = data_parallel(args.device)
    if ranks is not None:
        ranks.check_batch(config.batch_size)
    main = ranks is None or ranks.is_main
    if about and main:
        print(f"paper recipe: {about['row_reason']}", file=sys.stderr)
    settings = {
        "model": {"source": args.model, "device": args.device, "load_in_4bit": args.load_in_4bit, "trust_remote_code": args.trust_remote_code},
        "start": args.start, "n": args.n, "allow_final": args.allow_final, "heal": config.to_json(),
        "processes": ranks.size if ranks is not None else 1, "save": args.out is not None, "dtype": args.dtype,
        "repair": repair.to_json() if repair else None,
    }
    if not main:  # the other ranks train their share and never touch the store
        heal_run(None, None, settings, lambda: False, args.out, ranks)
        return
    store = Store()
    run_id = store.create_run("heal", args.model, settings)
    with store.running(run_id) as run:
        run.result = heal_run(store, run_id, settings, run.cancelled, args.out, ranks, lambda e: _print_heal_event(e, config.steps))
    print(f"healed model saved to {run.result['folder']} (run {run_id})" if run.result.get("folder") else
          f"healed model not saved (give --out to save it); run {run_id}")
    if args.gguf:  # converted from the saved folder: healing changed every kept layer's weights


        loaded = load_model(run.result["folder"], device="cpu", dtype=torch.float32)
        print(f"{convert_model(loaded, args.gguf, args.gguf_type, tokenizer_gguf(args.model)).describe()}, saved to {args.gguf}")
    _publish(args, token, run.result.get("folder"), args.gguf)


def _classify_arguments(parser: argparse.ArgumentParser) -> None:
    _model_arguments(parser)
    add_options(parser, ClassifySettings)
    add_options(parser, FinetuneConfig, prefix=FINETUNE)
    parser.add_argument("--out", required=True)


def _classify(args: argparse.Namespace) -> None:
    """The accuracy-vs-k curve in the foreground, as a store run (the background job's code path)."""
    finetune = given(FinetuneConfig, args, prefix=FINETUNE)
    settings = ClassifySettings(**given(ClassifySettings, args, model=args.model, device=args.device), finetune=finetune)
    settings.check()
    _check_out(args.out)
    store = Store()
    run_id = store.create_run("classify", settings.model, settings.to_json())

    def report(event: dict) -> None:
        if event.get("kind") in ("point", "phase"):
            print(describe_point(event) if event["kind"] == "point" else event["phase"], file=sys.stderr, flush=True)

    result = _run_in_foreground(store, run_id, execute_classify, report)
    write_json(args.out, {"run_id": run_id, "settings": settings.to_json(), **result})


def _job_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_id", type=int)
    parser.add_argument("--store", default=None, help="the SQLite store holding the run (default: EXPLORER_HOME's)")


def _job(args: argparse.Namespace) -> None:
    """Internal: the background runner `explorer.jobs.submit` starts."""
    run_job(Store(args.store), args.run_id)
    # The outcome is in the store: leave now. Python's own teardown of torch and transformers took
    # about 5 s on a loaded 2-core machine, which a cancel (and the next queued job) would wait for.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _cancel_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_id", type=int, help="the run to stop (its number on the Runs page)")
    parser.add_argument("--store", default=None, help="the SQLite store holding the run (default: EXPLORER_HOME's)")


def _cancel(args: argparse.Namespace) -> None:
    """The operator's cancel: any queued or running run, whoever started it (a page's Cancel is only
    its own visitor's). A job's runner is stopped (killed after a grace period); a foreground CLI
    run stops at its next check."""
    store = Store(args.store)
    run = store.get_run(args.run_id)
    if not cancel(store, args.run_id, wait=True):
        raise ExplorerError(f"Run {args.run_id} ({run.kind}) is already {store.get_run(args.run_id).status}: nothing to cancel.")
    print(f"run {args.run_id} ({run.kind}) cancelled")


def _heal_ranks(args: argparse.Namespace) -> None:
    """Internal: one rank of a multi-GPU heal job (started by the job runner under accelerate)."""
    heal_ranks(Store(args.store), args.run_id)


COMMANDS: dict[str, tuple[Callable, Callable, str]] = {
    "similarity": (_similarity_command_arguments, _similarity, "angular distances for every (l, n)"),
    "sublayers": (_similarity_arguments, _sublayers, "angular distance and Block Influence of every attention and MLP sub-layer"),
    "prune": (_prune_arguments, _prune, "remove a block or any set of layers (or sub-layers) and save the model"),
    "export-gguf": (_export_gguf_arguments, _export_gguf, "a GGUF without a block: copied from a GGUF, or converted from a folder"),
    "eval": (_eval_arguments, _eval, "accuracy of a task (MMLU, MMLU cloze, quiz, ...) with its 95%% interval"),  # argparse formats help with %
    "loss": (_loss_arguments, _loss, "validation loss on held-out text, optionally with a block dropped"),
    "sweep": (_sweep_arguments, _sweep, "accuracy and loss against the fraction of layers dropped"),
    "speed": (_speed_arguments, _speed, "prefill latency, decode throughput and memory, pruned against unpruned"),
    "heal": (_heal_arguments, _heal, "prune a block, heal it with (Q)LoRA and save the merged model"),
    "classify": (_classify_arguments, _classify, "classification accuracy vs layers kept: in-context, prompt- and head-finetuned"),
    "cancel": (_cancel_arguments, _cancel, "cancel a queued or running run, whoever started it (the operator's cancel)"),
    "job": (_job_arguments, _job, "internal: run a queued background job"),
    "heal-ranks": (_job_arguments, _heal_ranks, "internal: one process of a multi-GPU heal job"),
}


class Parser(argparse.ArgumentParser):
    """argparse with its errors as the CLI's other errors: one line on stderr, exit status 2 (its own
    prints the usage first, two lines and more)."""

    def error(self, message: str):
        command = self.prog.removeprefix("python -m explorer").strip()
        print(f"error: {command + ': ' if command else ''}{message}", file=sys.stderr)
        sys.exit(2)


def main(argv: list[str] | None = None) -> int:
    # bitsandbytes (imported through peft) warns on every start on AVX512-BF16 CPUs that an optional
    # kernel package from the hub is missing; its built-in kernels work, so the warning only misleads.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    parser = Parser(prog="python -m explorer", description="Layer-Pruning Explorer")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (add_arguments, _, help_text) in COMMANDS.items():
        add_arguments(sub.add_parser(name, help=help_text))
    args = parser.parse_args(argv)
    configure("cli")  # `job` switches to the runner's share in run_job
    try:
        check_device(getattr(args, "device", None))  # an unknown or missing device fails before anything loads
        COMMANDS[args.command][1](args)
    except ExplorerError as exc:
        print("error: " + " ".join(str(exc).split()), file=sys.stderr)  # one line, whatever the message holds
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 0

"""Questions per second of our scorers against lm-eval on the same questions, same model object.

Two pairs, in one process, each pass timed end to end as a user runs it (lm-eval's time
includes building its task and requests from our offline config; ours includes building the
prompts):
  quiz: our cloze scorer (`run_task(..., "quiz-capitals")`, 3-shot) vs lm-eval on `explorer_quiz_capitals`;
  mmlu: our letter-format MMLU scorer (`run_task(..., "mmlu")`, 5-shot as in the paper) vs
        lm-eval on the same local CSVs (`explorer_mmlu_<subject>`).
Goal from issue 14: >= 4x for both, same predictions (the few-shot prefix shared by a task's
questions runs once as a KV cache; each question then costs only its own tokens).
Each pass is warmed up once, then timed `--repeats` times, interleaved so that load from other
processes hits both alike; medians are reported. Wall time is what a user waits; the process's
CPU time is reported beside it because on a shared machine it moves far less with other load
(with `--threads 1` it is the work done). Per-question predictions must be identical.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Callable

import torch

from benchmarks import alternated, arguments, environment, report, timed
from explorer.evaluation.evaluate import run_task
from explorer.evaluation.lmeval import run_lmeval
from explorer.evaluation.tasks import get_task
from explorer.evaluation.tasks.mmlu import write_mmlu_tasks
from explorer.evaluation.tasks.quiz import write_quiz_task
from explorer.lm.models import load_model

LETTERS = "ABCD"
GOALS = {"quiz": 4.0, "mmlu": 4.0}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = arguments("scoring", __doc__)
    parser.add_argument("--quiz", default="quiz-capitals")
    parser.add_argument("--quiz-questions", type=int, default=60)
    parser.add_argument("--quiz-shots", type=int, default=None, help="solved quiz examples (default: the quiz's default)")
    shared = os.environ.get("EXPLORER_SHARED", str(Path(__file__).resolve().parents[2] / "shared"))
    parser.add_argument("--mmlu-dir", default=str(Path(shared) / "data" / "mmlu"))
    parser.add_argument("--subject", default="high_school_geography")
    parser.add_argument("--mmlu-questions", type=int, default=40)
    parser.add_argument("--shots", type=int, default=5, help="MMLU few-shot examples (both scorers)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    return parser.parse_args(argv)


def _pair(name: str, ours: Callable[[], list[str]], theirs: Callable[[], list[str]], questions: int, repeats: int) -> dict:
    """Warm up both, then alternate who goes first; returns medians, ratio and the agreement."""
    timed(ours), timed(theirs)
    result, picks = alternated(name, {"ours": ours, "lm_eval": theirs}, questions, repeats)
    return {**result, "goal": GOALS[name], "same_predictions": picks["ours"] == picks["lm_eval"],
            "disagreements": sum(a != b for a, b in zip(picks["ours"], picks["lm_eval"]))}


def measure(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_model(args.model, device=args.device)
    folder = Path(tempfile.mkdtemp(prefix="lmeval-bench-"))
    size = args.batch_size

    quiz_task = write_quiz_task(args.quiz, shots=args.quiz_shots, folder=folder)
    quiz_options = {} if args.quiz_shots is None else {"shots": args.quiz_shots}
    quiz = _pair(
        "quiz",
        lambda: [
            r.pred for r in run_task(loaded, args.quiz, limit=args.quiz_questions, batch_size=size, **quiz_options).per_question
        ],
        lambda: [
            LETTERS[p["pred_norm"]]
            for p in run_lmeval(loaded, [quiz_task], limit=args.quiz_questions, include_path=folder, batch_size=size)["predictions"][quiz_task]
        ],
        args.quiz_questions,
        args.repeats,
    )
    [mmlu_task] = write_mmlu_tasks(args.mmlu_dir, [args.subject], folder=folder)
    mmlu = _pair(
        "mmlu",
        lambda: [
            r.pred
            for r in run_task(
                loaded, "mmlu", limit=args.mmlu_questions, batch_size=size,
                mmlu_dir=args.mmlu_dir, subjects=[args.subject], shots=args.shots,
            ).per_question
        ],
        lambda: [
            LETTERS[p["pred"]]
            for p in run_lmeval(
                loaded, [mmlu_task], limit=args.mmlu_questions, num_fewshot=args.shots, include_path=folder, batch_size=size
            )["predictions"][mmlu_task]
        ],
        args.mmlu_questions,
        args.repeats,
    )
    return {
        "model": loaded.name,
        **environment(loaded.device),
        "batch_size": size,
        "quiz": {"task": args.quiz, "shots": get_task(args.quiz, **quiz_options).shots, **quiz},
        "mmlu": {"subject": args.subject, "shots": args.shots, **mmlu},
    }


def table(result: dict) -> str:
    lines = [
        f"{result['model']}, batch {result['batch_size']}, {result['device']} ({result['torch_threads']} threads, "
        f"load average after {result['load_average_after'][0]:.1f} on {result['cpu_count']} CPUs)",
        "",
        "| pair | questions | ours q/s | lm-eval q/s | speedup (wall) | speedup (CPU time) | goal | same predictions |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name in ("quiz", "mmlu"):
        r = result[name]
        agreement = "yes" if r["same_predictions"] else f"no ({r['disagreements']} differ)"
        label = f"quiz ({r['task']}, {r['shots']}-shot)" if name == "quiz" else f"mmlu letter ({r['subject']}, {r['shots']}-shot)"
        lines.append(
            f"| {label} | {r['questions']} | {r['questions_per_s']['ours']:.2f} | {r['questions_per_s']['lm_eval']:.2f} "
            f"| {r['speedup']:.2f}x | {r['cpu_speedup']:.2f}x | {r['goal']:.0f}x | {agreement} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    result = measure(args)
    return report(result, args.out, table)

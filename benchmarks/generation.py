"""Questions per second of our generation (explorer.lm.generate through `run_task`) against lm-eval's
`generate_until` on the same questions, same model object, same batch size, greedy.

Three tasks, each as an lm-eval task written from our prompts (`GenerationTask.write_lmeval_task`):
  quiz: quiz-capitals-gen (3-shot, answers of a few tokens, stop at the line's end);
  mmlu: mmlu-gen (5-shot as in the paper, the letter generated; local CSVs);
  arith: arith-cot (4-shot, a chain of thought of up to 64 tokens).
Goal from issue 21: >= 3x, with every generated text identical. Each pass is timed end to end as a
user runs it (lm-eval's time includes building its task and requests from our config; ours includes
building the prompts). Both are warmed up on a few questions, then timed `--repeats` times,
alternating who goes first so load from other processes hits both alike; medians are reported,
with the process's CPU time beside the wall time (on a shared machine it moves far less with load).

Where the time goes: every pass also counts the model's forward calls and the token positions they
ran (rows x input width, padding included). Prompt processing costs per position; a decoding step
costs about the same whatever its few rows, so the calls count the decoding.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
from pathlib import Path
from typing import Callable

import torch

from benchmarks import alternated, arguments, environment, report
from explorer.evaluation.evaluate import run_task
from explorer.evaluation.lmeval import run_lmeval
from explorer.evaluation.tasks import get_task
from explorer.lm.models import load_model

GOAL = 3.0
WARM_UP = 4  # questions each side runs once before timing


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = arguments("generation", __doc__)
    shared = os.environ.get("EXPLORER_SHARED", str(Path(__file__).resolve().parents[2] / "shared"))
    parser.add_argument("--mmlu-dir", default=str(Path(shared) / "data" / "mmlu"))
    parser.add_argument("--subject", default="high_school_geography")
    parser.add_argument("--quiz-questions", type=int, default=48)
    parser.add_argument("--mmlu-questions", type=int, default=24)
    parser.add_argument("--arith-questions", type=int, default=24)
    parser.add_argument("--tasks", default="quiz,mmlu,arith", help="comma-separated, of quiz, mmlu and arith")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    return parser.parse_args(argv)


@contextlib.contextmanager
def counting(model: torch.nn.Module, counts: dict[str, int]):
    """Count the model's forward calls and the token positions they run (rows x input width)."""

    def count(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        counts["forward_calls"] += 1
        counts["positions"] += ids.numel() if ids is not None else 0

    handle = model.register_forward_pre_hook(count, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def _pair(model: torch.nn.Module, ours: Callable[[int], list[str]], theirs: Callable[[int], list[str]], questions: int,
          repeats: int, name: str) -> dict:
    """Warm both up, then alternate who goes first; medians, ratio, work done and whether every text agrees."""
    ours(WARM_UP), theirs(WARM_UP)
    work: dict[str, dict[str, int]] = {}

    def counted(key: str, run: Callable[[int], list[str]]) -> Callable[[], list[str]]:
        def go() -> list[str]:
            work[key] = {"forward_calls": 0, "positions": 0}
            with counting(model, work[key]):
                return run(questions)
        return go

    result, texts = alternated(name, {"ours": counted("ours", ours), "lm_eval": counted("lm_eval", theirs)}, questions, repeats)
    return {**result, "goal": GOAL, "work": work, "same_outputs": texts["ours"] == texts["lm_eval"],
            "differing_outputs": sum(a != b for a, b in zip(texts["ours"], texts["lm_eval"]))}


def measure(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_model(args.model, device=args.device)
    folder = Path(tempfile.mkdtemp(prefix="lmeval-generation-bench-"))
    tasks = {
        "quiz": ("quiz-capitals-gen", {}, args.quiz_questions),
        "mmlu": ("mmlu-gen", {"mmlu_dir": args.mmlu_dir, "subjects": [args.subject], "shots": 5}, args.mmlu_questions),
        "arith": ("arith-cot", {}, args.arith_questions),
    }
    result = {"model": loaded.name, **environment(loaded.device), "batch_size": args.batch_size}
    for key in [k.strip() for k in args.tasks.split(",") if k.strip()]:
        name, options, questions = tasks[key]
        task = get_task(name, **options)
        lmeval_task = task.write_lmeval_task(questions, folder)

        def ours(limit: int) -> list[str]:
            return [r.output for r in run_task(loaded, name, limit=limit, batch_size=args.batch_size, **options).per_question]

        def theirs(limit: int) -> list[str]:
            outputs = run_lmeval(loaded, [lmeval_task], limit=limit, include_path=folder, batch_size=args.batch_size)
            return [p["output"] for p in outputs["predictions"][lmeval_task]]

        result[key] = {"task": name, "source": task.source, **_pair(loaded.model, ours, theirs, questions, args.repeats, key)}
    return result


def table(result: dict) -> str:
    lines = [
        f"{result['model']}, batch {result['batch_size']}, {result['device']} ({result['torch_threads']} threads, "
        f"load average after {result['load_average_after'][0]:.1f} on {result['cpu_count']} CPUs)",
        "",
        "| task | questions | ours q/s | lm-eval q/s | speedup (wall) | speedup (CPU time) | goal | same outputs "
        "| forward calls ours / lm-eval | token positions ours / lm-eval |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for key in ("quiz", "mmlu", "arith"):
        if key not in result:
            continue
        r = result[key]
        same = "yes" if r["same_outputs"] else f"no ({r['differing_outputs']} differ)"
        lines.append(
            f"| {r['task']} | {r['questions']} | {r['questions_per_s']['ours']:.2f} | {r['questions_per_s']['lm_eval']:.2f} "
            f"| {r['speedup']:.2f}x | {r['cpu_speedup']:.2f}x | {r['goal']:.0f}x | {same} "
            f"| {r['work']['ours']['forward_calls']} / {r['work']['lm_eval']['forward_calls']} "
            f"| {r['work']['ours']['positions']} / {r['work']['lm_eval']['positions']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    return report(measure(args), args.out, table)

"""Healing recipes side by side: nll, kl (distillation from the unpruned model), self data and last-layers.

For each n in --n, the similarity block (the paper's argmin of the angular distance on the
embedded text) is pruned and healed by each arm with the same HealConfig (its defaults: --steps
of 4 x 128 tokens, LoRA rank 8 on every linear projection, lr 3e-4) except what the arm changes:
  nll:          next-token loss on the text (the paper's heal),
  kl:           KL(unpruned || pruned) over the whole vocabulary at every position (T = 1),
  self:         next-token loss on the unpruned model's own greedy continuations (self data),
  last-layers:  full fine-tuning of the last 3 layers and the LM head, next-token loss.
Each heal runs in its own process (`--one`), so its peak resident memory (ru_maxrss) is its own;
the unpruned model's evaluation is made once, first, in a shared store; the first self heal makes
the self data there (its time includes that generation, reported apart as well), so every other
arm's wall and CPU time is the heal alone: pruning, the evaluation of the pruned model, training,
merging and the evaluation of the healed model.

Reported per run: the fraction of the held-out loss damage recovered, (L_pruned - L_healed) /
(L_pruned - L_unpruned); quiz accuracy by likelihood and the same capitals answered by generation
(--gen-task), each with its 95% Wilson interval and n; wall and
CPU seconds; peak RSS and its excess over the RSS right after loading. The kl arm's excess over
the nll arm's is the teacher's cost: the removed layers (kept, not copied: the student trains on
the teacher's own weights) and the teacher's logits, set against those two sizes.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import torch

from benchmarks import arguments, environment, report
from explorer.core.threads import threads_for
from explorer.lm.layers import decoder_layers
from explorer.lm.models import load_model
from explorer.state.cache import cached_distances, cached_quick_eval, cached_self_data
from explorer.state.store import Store
from explorer.surgery.heal import HealConfig, prune_and_heal

ARMS = {
    "nll": {},
    "kl": {"objective": "kl"},
    "self": {"data": "self"},
    "last-layers": {"targets": "last-layers", "last_layers": 3},
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = arguments("distill", __doc__)
    parser.add_argument("--n", default="6,9", help="comma-separated block sizes")
    parser.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, of {', '.join(ARMS)}")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--seq-len", type=int, default=128, help="tokens per training document (and held-out document)")
    parser.add_argument("--questions", type=int, default=243, help="quiz questions per evaluation (243: all of quiz-capitals)")
    parser.add_argument("--val-samples", type=int, default=32, help="held-out documents for the loss")
    parser.add_argument("--workers", type=int, default=1, help="heals run at once (each its own process)")
    parser.add_argument("--starts", default=None, help="comma-separated first layers, one per n (default: the similarity "
                                                         "blocks, computed on 32 embedded documents x 128 tokens)")
    parser.add_argument("--generation-batch", type=int, default=16, help="prompts continued at once for the self data")
    parser.add_argument("--gen-task", default="quiz-capitals-gen", help="generation task scored beside the quiz ('' for none)")
    parser.add_argument("--gen-limit", type=int, default=None, help="its questions per evaluation (default: --questions)")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: one heal, as JSON on stdout
    args = parser.parse_args(argv)
    args.gen_limit = args.gen_limit or args.questions
    return args


def heal_config(args: argparse.Namespace, arm: str) -> HealConfig:
    return HealConfig(steps=args.steps, seq_len=args.seq_len, eval_every=args.steps, eval_limit=args.questions, val_samples=args.val_samples,
                      eval_batch_size=args.generation_batch, quantize=False, gen_task=args.gen_task or None,
                      gen_limit=args.gen_limit, **ARMS[arm])


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))


def one(args: argparse.Namespace) -> dict:
    """One heal in this process: {arm, n, start, metrics, seconds, cpu_seconds, peak and loaded RSS}."""
    job = json.loads(args.one)
    loaded = load_model(args.model, device=args.device or "cpu")
    loaded_rss = rss_bytes()
    store = Store(job["store"])
    config = heal_config(args, job["arm"])
    started, started_cpu = time.perf_counter(), time.process_time()
    outcome = prune_and_heal(loaded, job["start"], job["n"], config,
                             reference=lambda unpruned, resolved: cached_quick_eval(unpruned, resolved, store),
                             make_self_data=lambda unpruned, resolved: cached_self_data(unpruned, resolved, store))
    seconds, cpu = time.perf_counter() - started, time.process_time() - started_cpu
    metrics = {name: {k: v for k, v in m.items() if k not in ("predictions", "gen_predictions")} for name, m in outcome.metrics.items()}
    return {**job, "metrics": metrics, "seconds": seconds, "cpu_seconds": cpu, "loaded_rss": loaded_rss,
            "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "self_data": outcome.self_data}


def recovered(metrics: dict) -> float:
    unpruned, pruned, healed = (metrics[k]["val_loss"] for k in ("before_pruning", "after_pruning", "healed"))
    return (pruned - healed) / (pruned - unpruned)


def prepare(args: argparse.Namespace, store_path: str, sizes: list[int], arms: list[str]) -> dict:
    """The blocks and the unpruned model's evaluation, made once in the shared store. The self data
    is made by the first self heal (the others wait for it, then reuse it), so its generation
    overlaps the other arms' training; its time is the store run's."""
    loaded = load_model(args.model, device=args.device or "cpu")
    store = Store(store_path)
    if args.starts:
        blocks = dict(zip(sizes, (int(s) for s in args.starts.split(","))))
    else:
        _, similarity, _ = cached_distances(loaded, "embedded", 32, 128, 8, store)
        blocks = {n: similarity.best_block(n).start for n in sizes}
    config = heal_config(args, arms[0])
    cached_quick_eval(loaded, config.resolved(loaded.device), store)
    layers = decoder_layers(loaded.model)
    layer_bytes = sum(p.numel() * p.element_size() for p in layers[0].parameters())
    vocab = loaded.model.get_output_embeddings().weight.shape[0]
    logits_bytes = config.batch_size * config.seq_len * vocab * 4  # one [batch, tokens, vocab] float32 tensor
    return {"blocks": blocks, "layer_bytes": layer_bytes, "logits_bytes": logits_bytes,
            "model": loaded.name, "num_layers": loaded.num_layers, "device": str(loaded.device)}


def run_one(args: argparse.Namespace, job: dict) -> dict:
    command = [sys.executable, "-m", "benchmarks", "distill", "--model", args.model, "--steps", str(args.steps),
               "--seq-len", str(args.seq_len),
               "--questions", str(args.questions), "--val-samples", str(args.val_samples),
               "--generation-batch", str(args.generation_batch), "--gen-task", args.gen_task,
               "--gen-limit", str(args.gen_limit), "--one", json.dumps(job)]
    if args.device:
        command += ["--device", args.device]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "EXPLORER_TORCH_THREADS": str(args.threads or 1)})
    if done.returncode != 0:
        raise RuntimeError(f"{job}: {done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    with open(args.out + ".partial", "a") as partial:  # each heal as it ends: a stopped run keeps what it measured
        partial.write(json.dumps(result) + "\n")
    print(f"  n={job['n']} {job['arm']}: recovered {recovered(result['metrics']):.2f}, {result['seconds']:.0f} s", file=sys.stderr, flush=True)
    return result


def measure(args: argparse.Namespace) -> dict:
    load_before = os.getloadavg()
    sizes = [int(n) for n in args.n.split(",")]
    arms = [a for a in args.arms.split(",") if a]
    if unknown := [a for a in arms if a not in ARMS]:
        raise SystemExit(f"unknown arm {unknown[0]}: choose from {', '.join(ARMS)}")
    with tempfile.TemporaryDirectory(prefix="explorer-distill-") as folder:
        store_path = os.path.join(folder, "runs.sqlite")
        shared = prepare(args, store_path, sizes, arms)
        jobs = [{"arm": arm, "n": n, "start": shared["blocks"][n], "store": store_path} for n in sizes for arm in arms]
        with ThreadPoolExecutor(args.workers) as pool:
            runs = list(pool.map(lambda job: run_one(args, job), jobs))
        made = Store(store_path).list_runs("self-data")
        shared["generation"] = ({"seconds": made[0].updated - made[0].created, **runs[[r["arm"] for r in runs].index("self")]["self_data"]}
                                if made else None)
    config = heal_config(args, "nll")
    return {**shared, **environment(shared["device"]), "load_average_before": load_before, "steps": args.steps,
            "batch_size": config.batch_size, "seq_len": config.seq_len, "rank": config.rank, "lr": config.lr,
            "questions": args.questions, "gen_task": args.gen_task or None, "gen_limit": args.gen_limit,
            "val_samples": args.val_samples, "workers": args.workers, "runs": runs}


def accuracy_cell(metrics: dict, questions: int, prefix: str = "") -> str:
    """The healed model's accuracy with its interval and n, then the pruned and unpruned models'; `prefix`
    "gen_" reads the generation task's ("—" when none was scored)."""
    healed = metrics["healed"]
    if f"{prefix}accuracy" not in healed:
        return "—"
    return (f"{healed[prefix + 'accuracy']:.2f} [{healed[prefix + 'ci_low']:.2f}, {healed[prefix + 'ci_high']:.2f}], {questions} "
            f"(pruned {metrics['after_pruning'][prefix + 'accuracy']:.2f}, unpruned {metrics['before_pruning'][prefix + 'accuracy']:.2f})")


def table(result: dict) -> str:
    gib = 2**30
    lines = [
        f"{result['model']} ({result['num_layers']} layers), similarity blocks, {result['steps']} steps of "
        f"{result['batch_size']} x {result['seq_len']} tokens, lr {result['lr']:g}, LoRA rank {result['rank']} (all-linear) "
        f"except last-layers; {result['device']}, 1 thread per heal, {result['workers']} heal(s) at once, load "
        f"{result['load_average_before'][0]:.1f} before and {result['load_average_after'][0]:.1f} after (1-min average)",
        "",
        "| n | block | arm | damage recovered | held-out loss (unpruned → pruned → healed) | quiz accuracy [95% CI], n "
        "| generated [95% CI], n | wall s | CPU s | peak RSS GiB | over loaded GiB |",
        "|---:|---|---|---:|---|---|---|---:|---:|---:|---:|",
    ]
    for run in result["runs"]:
        m = run["metrics"]
        healed = m["healed"]
        lines.append(
            f"| {run['n']} | {run['start']}-{run['start'] + run['n'] - 1} | {run['arm']} | {recovered(m):.2f} | "
            f"{m['before_pruning']['val_loss']:.3f} → {m['after_pruning']['val_loss']:.3f} → {healed['val_loss']:.3f} | "
            f"{accuracy_cell(m, result['questions'])} | {accuracy_cell(m, result['gen_limit'], 'gen_')} | {run['seconds']:.0f} | {run['cpu_seconds']:.0f} | {run['peak_rss'] / gib:.2f} | {(run['peak_rss'] - run['loaded_rss']) / gib:.2f} |")
    if result["generation"]:
        g = result["generation"]
        lines += ["", f"Self data, made once by the first self heal (inside its time) and reused by the others: "
                      f"{g['documents']} documents, {g['generated_tokens']} generated tokens, {g['seconds']:.0f} s wall."]
    lines += ["", f"Teacher's expected memory: {result['layer_bytes'] / 2**20:.0f} MiB a removed layer (kept, not copied) "
                  f"plus [batch, tokens, vocab] float32 logits of {result['logits_bytes'] / 2**20:.0f} MiB each."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(args.threads or threads_for("cli"))  # EXPLORER_TORCH_THREADS wins, as everywhere
    if args.one:
        print(json.dumps(one(args)))
        return 0
    return report(measure(args), args.out, table)

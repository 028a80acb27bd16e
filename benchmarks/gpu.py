"""CUDA check, run on a lent GPU: similarity throughput and the real QLoRA path (bitsandbytes nf4).

No weights can travel to the GPU machine, so the model is a random-weight llama of a few
hundred million parameters built from a config, with the embedded model's tokenizer; the text
is a plain-text copy of the embedded corpus. Usage:

    python -m benchmarks gpu [--tokenizer DIR] [--text FILE] [--out results.json]

Without CUDA it says so and does nothing, so `python -m benchmarks` still runs the rest.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from benchmarks import RESULTS, report
from explorer.analysis.similarity import compute_distances
from explorer.lm.data import make_samples, pad_batch
from explorer.lm.layers import parameter_count
from explorer.lm.models import LoadedModel
from explorer.surgery.heal import HealConfig, merge, train_step, training_batches, training_model


def random_llama(tokenizer, layers: int = 24, hidden: int = 1024) -> LoadedModel:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 11 // 4,
        num_hidden_layers=layers, num_attention_heads=hidden // 64, num_key_value_heads=hidden // 128,
        max_position_embeddings=2048, tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config).to("cuda", torch.bfloat16).eval()
    return LoadedModel(model, tokenizer, f"random llama {layers}x{hidden}", "random-llama")


def _timed(fn, repeats: int = 3) -> float:
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.no_grad()
def similarity_throughput(loaded: LoadedModel, ids: list[list[int]], batch_size: int) -> dict:
    def bare(module):
        for start in range(0, len(ids), batch_size):
            input_ids, mask = pad_batch(ids[start : start + batch_size], loaded.tokenizer.pad_token_id)
            module(input_ids=input_ids.cuda(), attention_mask=mask.cuda(), use_cache=False)

    ours = _timed(lambda: compute_distances(loaded, ids, batch_size))
    full = _timed(lambda: bare(loaded.model))
    base = _timed(lambda: bare(loaded.model.base_model))
    tokens = sum(len(x) for x in ids)
    return {
        "tokens": tokens, "ours_s": ours, "full_forward_s": full, "base_forward_s": base,
        "tokens_per_s": tokens / ours, "ratio_vs_full_forward": ours / full, "ratio_vs_base_forward": ours / base,
    }


def lora_run(loaded: LoadedModel, config: HealConfig) -> dict:
    """Train `steps` LoRA updates through heal.py's own pieces and report loss and speed."""
    data = training_batches(loaded, config)
    torch.cuda.reset_peak_memory_stats()
    peft_model = training_model(loaded, config)
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=config.lr)
    peft_model.train()
    losses, tokens = [], 0
    torch.cuda.synchronize()
    start = time.perf_counter()
    for step, batch in enumerate(data, 1):
        losses.append(train_step(peft_model, optimizer, batch, config.lr, step, loaded.device))
        tokens += int(batch[1].sum())
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    merged = merge(peft_model, loaded)
    input_ids, mask = pad_batch([data[0][0][0].tolist()], loaded.tokenizer.pad_token_id)
    with torch.no_grad():
        merged_loss = float(merged(input_ids=input_ids.cuda(), attention_mask=mask.cuda(), labels=input_ids.cuda()).loss)
    quantized = [type(m).__name__ for m in peft_model.modules() if "4bit" in type(m).__name__]
    return {
        "quantize": bool(config.quantize), "nf4_linear_layers": len(quantized),
        "first_losses": losses[:3], "last_losses": losses[-3:], "tokens_per_s": tokens / seconds,
        "peak_gpu_gib": torch.cuda.max_memory_allocated() / 2**30, "merged_loss_first_batch": merged_loss,
    }


def main(argv: list[str] | None = None) -> int:
    from transformers import AutoTokenizer

    from explorer.lm.models import EMBEDDED, resolve_source

    parser = argparse.ArgumentParser(prog="python -m benchmarks gpu")
    parser.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the embedded model's)")
    parser.add_argument("--text", default="embedded", help="calibration/healing text source")
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--out", default=str(RESULTS / "gpu.json"))
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu: skipped, no CUDA device")
        return 0
    _, location, gguf_file = resolve_source(args.tokenizer or EMBEDDED)  # the GGUF itself if no copy could be written
    tokenizer = AutoTokenizer.from_pretrained(location, gguf_file=gguf_file)
    loaded = random_llama(tokenizer)
    ids = make_samples(tokenizer, args.text, args.samples, args.seq_len).ids
    result = {
        "device": torch.cuda.get_device_name(), "torch": torch.__version__, "model": loaded.name,
        "params": parameter_count(loaded.model), "similarity": similarity_throughput(loaded, ids, batch_size=16),
    }
    heal_config = dict(source=args.text, steps=args.steps, batch_size=8, seq_len=256, lr=1e-3, rank=16, alpha=32)
    result["lora_bf16"] = lora_run(loaded, HealConfig(quantize=False, **heal_config))
    result["qlora_nf4"] = lora_run(loaded, HealConfig(quantize=True, **heal_config))
    return report(result, args.out, lambda data: json.dumps(data, indent=1))

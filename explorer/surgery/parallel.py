"""Data-parallel healing under `accelerate launch` (DDP; gloo on CPU, NCCL on GPUs).

`accelerate launch --multi_gpu --num_processes K -m explorer heal ...` (or `torchrun
--nproc_per_node K -m explorer heal ...`) starts K copies of the CLI; with `--device cpu` they
train on CPU over gloo. (accelerate 1.15's `--cpu --num_processes K` starts ONE process: its
multi-CPU mode needs MPI and a host file.) Each
builds the same global batches (same text, same seed), trains on its own contiguous share of
every batch's rows, and DDP averages the adapters' gradients, so every rank holds the same
adapter after every step. Only the main process writes: store events, the reference and
periodic evaluations (run once, on the main process, while the others wait), the model and
run.json.

Why the result equals one process on the whole batch, exactly: the single-process loss is
the mean over the batch's N label tokens, L = (1/N) sum_t l_t. Rank r holds n_r of them and
its model returns the mean over its own tokens, L_r = (1/n_r) sum_{t in r} l_t. Halves of
a batch rarely hold equal token counts, so averaging the L_r's gradients would weight tokens
unequally. Each rank therefore backpropagates w_r * L_r with w_r = K * n_r / N (`share`):
DDP divides the sum over ranks by K, giving (1/K) sum_r (K n_r / N) grad L_r
= (1/N) sum_t grad l_t = grad L. AdamW then sees the single-process gradient. N is known on
every rank without communication because every rank builds the whole global batch.

With one process (plain `python -m explorer heal`, the page's job) `data_parallel()` is None
and nothing here runs: no accelerate import, no process group, no extra cost.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any

import torch

from explorer.core.errors import ExplorerError


def launched_processes() -> int:
    """The world size `accelerate launch` (or torchrun) set for this process; 1 otherwise."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def label_tokens(labels: torch.Tensor) -> int:
    """Tokens the causal-LM loss averages over: labels after the one-position shift, not -100."""
    return int((labels[:, 1:] != -100).sum())


@dataclass
class Ranks:
    """This process's place in a data-parallel heal, and the few collectives healing needs."""

    accelerator: Any  # accelerate.Accelerator

    @property
    def size(self) -> int:
        return self.accelerator.num_processes

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    def check_batch(self, batch_size: int) -> None:
        if batch_size < self.size:
            raise ExplorerError(
                f"The batch size ({batch_size}) must be at least the number of processes ({self.size}): "
                "each process trains on its share of every batch."
            )

    def share(self, batch: tuple[torch.Tensor, ...]) -> tuple[tuple[torch.Tensor, ...], float]:
        """This rank's contiguous rows of a global batch, and its loss weight K * n_r / N (see the module doc)."""
        rows = torch.tensor_split(torch.arange(batch[0].shape[0]), self.size)[self.rank]
        mine = tuple(t[rows] for t in batch)
        return mine, self.size * label_tokens(mine[2]) / label_tokens(batch[2])

    def total(self, value: float) -> float:
        """The sum of a number over all ranks (every rank gets it)."""
        return float(self.accelerator.reduce(torch.tensor([value], dtype=torch.float64, device=self.device), "sum").item())

    def any(self, flag: bool) -> bool:
        """True on every rank when it is true on any: a cancel seen by the main process stops all."""
        return self.total(float(flag)) > 0

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model under DDP (gradients averaged in backward)."""
        return self.accelerator.prepare_model(model)

    def wait(self) -> None:
        self.accelerator.wait_for_everyone()


def data_parallel(device: str | None = None) -> Ranks | None:
    """The data-parallel context when launched with several processes, else None.

    On CPU (`device` "cpu", or no CUDA) the processes join over gloo: accelerate only picks its
    multi-CPU mode when told to use the CPU, else it would leave them unconnected."""
    if launched_processes() <= 1:
        return None
    from accelerate import Accelerator  # deferred: accelerate loads only for streamed or multi-process runs

    cpu = (device or "").startswith("cpu") or not torch.cuda.is_available()
    return Ranks(Accelerator(cpu=cpu))


def visible_gpus() -> int:
    """CUDA devices this process sees: how many processes a heal job can train on."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def launch_command(processes: int, *module_args: str) -> list[str]:
    """`accelerate launch` of `python -m explorer ...` on `processes` ranks (one per GPU; on a
    machine without GPUs they train on the CPU over gloo, see data_parallel)."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "explorer", *module_args]

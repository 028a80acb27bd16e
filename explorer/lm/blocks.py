"""Which layers a block [start, start+n) removes, whether that is allowed, and how to say it.

Every page, the CLI and the pruner validate blocks here so the rules and messages agree.
"""

from __future__ import annotations

from dataclasses import dataclass

from explorer.core.errors import ExplorerError


@dataclass(frozen=True)
class Block:
    """Decoder layers [start, start + n) of a model with `num_layers` layers."""

    start: int
    n: int
    num_layers: int

    @property
    def end(self) -> int:
        return self.start + self.n

    @property
    def removed(self) -> list[int]:
        return list(range(self.start, self.end))

    @property
    def kept(self) -> list[int]:
        return [i for i in range(self.num_layers) if not self.start <= i < self.end]

    @property
    def span(self) -> str:
        """The removed layers as people write them: '17' or '17-24' (inclusive)."""
        return str(self.start) if self.n == 1 else f"{self.start}-{self.end - 1}"

    @property
    def fraction(self) -> float:
        return self.n / self.num_layers

    @property
    def includes_final(self) -> bool:
        return self.n > 0 and self.end == self.num_layers

    def describe(self, removed_params: int | None = None) -> str:
        """e.g. 'layers 17-24 of 30 (8 layers, 27% of the model, 36M parameters)'."""
        if self.n == 0:
            return f"no layers of {self.num_layers}"
        span = f"layer {self.span}" if self.n == 1 else f"layers {self.span}"
        parts = [f"{self.n} layer{'s' if self.n > 1 else ''}", f"{self.fraction:.0%} of the model"]
        if removed_params is not None:
            parts.append(f"{removed_params / 1e6:.1f}M parameters")
        return f"{span} of {self.num_layers} ({', '.join(parts)})"


def default_size(num_layers: int) -> int:
    """The block size every view starts at: a quarter of the layers, where the paper's large models
    lose almost nothing (their MMLU holds to about half the layers removed)."""
    return max(1, num_layers // 4)


def simple_start(n: int, num_layers: int) -> int:
    """Where the paper's baseline block starts: the n deepest layers except the final one, [L-1-n, L-1)."""
    return num_layers - 1 - n


def final_keeping_starts(n: int, num_layers: int) -> range:
    """Starts l whose block [l, l+n) keeps the final layer: the candidates the paper chooses among."""
    return range(max(0, num_layers - n))


def check_block(start: int, n: int, num_layers: int, allow_final: bool = False) -> Block:
    """Validate a block; the final layer only goes with an explicit override (the paper keeps it)."""
    if n < 0 or start < 0:
        raise ExplorerError(f"Block start and size must be non-negative (got start {start}, n {n}).")
    if n >= num_layers:
        raise ExplorerError(f"Cannot remove {n} of {num_layers} layers: at least one layer must remain.")
    if start + n > num_layers:
        raise ExplorerError(
            f"Block [{start}, {start + n}) does not fit in {num_layers} layers: the last start for n={n} is {num_layers - n}."
        )
    block = Block(start, n, num_layers)
    if block.includes_final and not allow_final:
        raise ExplorerError(
            f"Block [{start}, {start + n}) removes the final layer {num_layers - 1}, which the paper shows must be kept; "
            "allow removing the final layer to do it anyway (--allow-final on the command line)."
        )
    return block

"""Which layers a pruning removes, whether that is allowed, and how to say it.

A `LayerSet` is any set of decoder layers removed, plus any attention or MLP sub-layers skipped
in the layers that stay; a `Block` [start, start + n) is the contiguous special case the paper
removes. Every page, the CLI and the pruner validate them here so the rules and messages agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from explorer.core.errors import ExplorerError

SUBLAYER_KINDS = ("attention", "mlp")  # the two sub-layers of a decoder layer, as LayerSet fields name them
SUBLAYER_LABELS = {"attention": "attention", "mlp": "MLP"}


def _runs(indices: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted indices as maximal half-open runs [a, b): (3, 4, 5, 9) -> [(3, 6), (9, 10)]."""
    runs: list[list[int]] = []
    for i in sorted(indices):
        if runs and runs[-1][1] == i:
            runs[-1][1] = i + 1
        else:
            runs.append([i, i + 1])
    return [(a, b) for a, b in runs]


def _spans(indices: Iterable[int]) -> str:
    """'17' , '17-24' or '3, 7-9, 12' (inclusive ranges, as people write layers)."""
    return ", ".join(str(a) if b == a + 1 else f"{a}-{b - 1}" for a, b in _runs(indices))


@dataclass(frozen=True, eq=False)
class LayerSet:
    """Decoder layers `removed` from a model with `num_layers` layers, and the `attention` / `mlp`
    sub-layers skipped in layers that stay (indices in the unpruned model). Two sets that remove
    the same things are equal whatever built them, so a sweep measures them once."""

    removed: tuple[int, ...]
    num_layers: int
    attention: tuple[int, ...] = ()
    mlp: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        """Sorted, and a layer whose two sub-layers are both skipped is removed: it computes the identity."""
        both = set(self.attention) & set(self.mlp)
        object.__setattr__(self, "removed", tuple(sorted(set(self.removed) | both)))
        object.__setattr__(self, "attention", tuple(sorted(set(self.attention) - set(self.removed))))
        object.__setattr__(self, "mlp", tuple(sorted(set(self.mlp) - set(self.removed))))

    def _identity(self) -> tuple:
        return self.removed, self.num_layers, self.attention, self.mlp

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LayerSet) and self._identity() == other._identity()

    def __hash__(self) -> int:
        return hash(self._identity())

    def __repr__(self) -> str:
        subs = "".join(f", {kind}={getattr(self, kind)}" for kind in SUBLAYER_KINDS if getattr(self, kind))
        return f"LayerSet(removed={self.removed}, num_layers={self.num_layers}{subs})"

    @property
    def n(self) -> int:
        """Whole layers removed."""
        return len(self.removed)

    @property
    def sublayers(self) -> int:
        """Sub-layers skipped in kept layers."""
        return len(self.attention) + len(self.mlp)

    @property
    def empty(self) -> bool:
        return not self.n and not self.sublayers

    @property
    def start(self) -> int:
        """The first layer that changes (removed or with a sub-layer skipped; 0 when nothing does):
        every layer below it computes what it computes unpruned."""
        return min((*self.removed, *self.attention, *self.mlp), default=0)

    @property
    def kept(self) -> list[int]:
        removed = set(self.removed)
        return [i for i in range(self.num_layers) if i not in removed]

    @property
    def kept_ranges(self) -> list[tuple[int, int]]:
        """The kept layers as half-open [a, b) runs (mergekit's `layer_range` convention)."""
        return _runs(self.kept)

    @property
    def contiguous(self) -> bool:
        """One run of whole layers and no skipped sub-layer: the paper's kind of cut."""
        return not self.sublayers and len(_runs(self.removed)) <= 1

    def as_block(self) -> "Block":
        """This set as a `Block`, which it must be (`contiguous`)."""
        if not self.contiguous:
            raise ExplorerError(f"{self.describe()} is not one contiguous block of layers.")
        return Block(self.start, self.n, self.num_layers)

    @property
    def span(self) -> str:
        """The removed layers as people write them: '17', '17-24' or '3, 7-9'; sub-layers after them."""
        parts = [_spans(self.removed)] if self.removed else []
        parts += [f"{SUBLAYER_LABELS[kind]} of {_spans(getattr(self, kind))}" for kind in SUBLAYER_KINDS if getattr(self, kind)]
        return "; ".join(parts) or "none"

    @property
    def fraction(self) -> float:
        return self.n / self.num_layers

    @property
    def includes_final(self) -> bool:
        return self.num_layers - 1 in self.removed

    @property
    def key(self) -> str:
        """What a pruned model's fingerprint says it lacks: 'start:n' for a block (as before layer
        sets existed, so cached results stay valid), the indices otherwise."""
        if self.contiguous:
            return f"{self.start if self.n else 0}:{self.n}"
        parts = [",".join(map(str, self.removed))] + [f"{kind}={','.join(map(str, getattr(self, kind)))}"
                                                       for kind in SUBLAYER_KINDS if getattr(self, kind)]
        return "set:" + ";".join(parts)

    def to_json(self) -> dict:
        return {"removed": list(self.removed), "num_layers": self.num_layers, "attention": list(self.attention),
                "mlp": list(self.mlp)}

    @classmethod
    def from_json(cls, data: dict) -> "LayerSet":
        return cls(tuple(data.get("removed", ())), data["num_layers"], tuple(data.get("attention", ())),
                   tuple(data.get("mlp", ())))

    def describe(self, removed_params: int | None = None) -> str:
        """e.g. 'layers 17-24 of 30 (8 layers, 27% of the model, 36.0M parameters)' or
        'attention of layers 3, 9 of 30 (2 attention sub-layers, ...)'."""
        if self.empty:
            return f"no layers of {self.num_layers}"
        head = []
        if self.removed:
            head.append(f"layer {_spans(self.removed)}" if self.n == 1 else f"layers {_spans(self.removed)}")
        for kind in SUBLAYER_KINDS:
            if indices := getattr(self, kind):
                head.append(f"{SUBLAYER_LABELS[kind]} of layer{'s' if len(indices) > 1 else ''} "
                            f"{_spans(indices)}")
        parts = []
        if self.n:
            parts += [f"{self.n} layer{'s' if self.n > 1 else ''}", f"{self.fraction:.0%} of the model"]
        for kind in SUBLAYER_KINDS:
            if count := len(getattr(self, kind)):
                parts.append(f"{count} {SUBLAYER_LABELS[kind]} sub-layer{'s' if count > 1 else ''}")
        if removed_params is not None:
            parts.append(f"{removed_params / 1e6:.1f}M parameters")
        return f"{' and '.join(head)} of {self.num_layers} ({', '.join(parts)})"


class Block(LayerSet):
    """Decoder layers [start, start + n) of a model with `num_layers` layers: a contiguous `LayerSet`."""

    def __init__(self, start: int, n: int, num_layers: int):
        super().__init__(tuple(range(start, start + n)), num_layers)

    def __repr__(self) -> str:
        return f"Block(start={self.start}, n={self.n}, num_layers={self.num_layers})"

    def __reduce__(self):  # pickled (Ray) by its own constructor's arguments
        return Block, (self.start, self.n, self.num_layers)

    @property
    def end(self) -> int:
        return self.start + self.n


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


def check_layer_set(removed: Iterable[int], num_layers: int, allow_final: bool = False, attention: Iterable[int] = (),
                    mlp: Iterable[int] = ()) -> LayerSet:
    """Validate any set of layers (and skipped sub-layers); the final layer only goes with an
    explicit override, as for a block."""
    given = {"layer": list(removed), "attention sub-layer": list(attention), "MLP sub-layer": list(mlp)}
    for what, indices in given.items():
        if bad := [i for i in indices if not 0 <= i < num_layers]:
            raise ExplorerError(f"No {what} {bad[0]} in a {num_layers}-layer model: layers are numbered 0 to {num_layers - 1}.")
        if len(set(indices)) != len(indices):
            raise ExplorerError(f"A {what} is listed twice: give each index once.")
    layers = LayerSet(tuple(given["layer"]), num_layers, tuple(given["attention sub-layer"]), tuple(given["MLP sub-layer"]))
    if layers.n >= num_layers:
        raise ExplorerError(f"Cannot remove {layers.n} of {num_layers} layers: at least one layer must remain.")
    if layers.includes_final and not allow_final:
        raise ExplorerError(
            f"The set removes the final layer {num_layers - 1}, which the paper shows must be kept; "
            "allow removing the final layer to do it anyway (--allow-final on the command line)."
        )
    return layers.as_block() if layers.contiguous and layers.n else layers


def parse_indices(text: str, what: str = "--layers") -> tuple[int, ...]:
    """'3, 7-9, 12' -> (3, 7, 8, 9, 12): how people write a set of layers (inclusive ranges)."""
    indices: list[int] = []
    for item in (part.strip() for part in text.replace(";", ",").split(",")):
        if not item:
            continue
        low, dash, high = item.partition("-")
        if not low.strip().isdigit() or (dash and not high.strip().isdigit()):
            raise ExplorerError(f"{what} takes layer numbers and ranges such as 3, 7-9, 12 (got '{text}').")
        indices += range(int(low), int(high) + 1) if dash else [int(low)]
    return tuple(indices)


def recorded_layers(record: dict) -> LayerSet:
    """The set a `block_record` describes (records from before layer sets hold start and n only)."""
    if "removed" not in record:
        return Block(record["start"], record["n"], record["num_layers"])
    subs = record.get("sublayers") or {}
    return LayerSet(tuple(record["removed"]), record["num_layers"], tuple(subs.get("attention", ())), tuple(subs.get("mlp", ())))

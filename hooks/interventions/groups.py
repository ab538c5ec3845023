"""Position groups: which padded positions of a batch an intervention reads or writes.

Position groups: the geometry's "image", "context", "question", "answer", plus "all" (every
non-padding position) and "after:<group>" (every position after the group's last one, e.g.
"after:context": the question, the chat template's tokens and the answer position); or
explicit per-row lists of padded positions. Positions are named through the prompt geometry
(`hooks.prompts.Geometry`), never counted by hand.

Between two batches (patching), a named group maps by order within the group (the k-th image
token to the k-th image token) **[ours]**; groups of different sizes are refused
(`PatchingError`) unless an explicit `PositionMap` says what goes where.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from hooks.interventions.trace import PatchingError
from hooks.prompts import PassBatch

__all__ = ["GROUPS", "PositionSpec", "PositionMap", "positions", "map_positions"]

GROUPS: tuple[str, ...] = ("image", "context", "question", "answer")
"""The position groups a sweep uses by default."""

PositionSpec = str | Sequence[Sequence[int]]


def _named_positions(batch: PassBatch, b: int, name: str) -> list[int]:
    g = batch.geometry[b]
    if name == "all":
        return list(range(g.n_pad, g.length))
    if name.startswith("after:"):
        inner = g.positions(name.removeprefix("after:"))
        if not inner:
            raise PatchingError(f"row {b} of the {batch.name} pass has no {name.removeprefix('after:')!r} "
                                f"positions, so {name!r} is undefined there")
        return list(range(max(inner) + 1, g.length))
    try:
        return g.positions(name)
    except ValueError as err:
        raise PatchingError(f"{err}; or 'all', 'after:<group>', or explicit per-row position lists") from None


def positions(batch: PassBatch, spec: PositionSpec) -> list[list[int]]:
    """Padded positions of every row of `batch`: a named group or explicit per-row lists.

    Names: "image", "context", "question", "answer" (the geometry's groups), "all" (every
    non-padding position) and "after:<group>" (from the group's last position + 1 to the end).
    Explicit lists need one list per row, each inside the row's non-padding part.
    """
    if isinstance(spec, str):
        return [_named_positions(batch, b, spec) for b in range(len(batch))]
    rows = [list(int(p) for p in row) for row in spec]
    if len(rows) != len(batch):
        raise PatchingError(f"explicit positions need one list per row: got {len(rows)} for a batch of {len(batch)}")
    for b, row in enumerate(rows):
        g = batch.geometry[b]
        bad = [p for p in row if not g.n_pad <= p < g.length]
        if bad:
            raise PatchingError(f"row {b}: positions {bad} are outside the prompt [{g.n_pad}, {g.length}) "
                                "(padding or past the end); positions are padded coordinates")
    return rows


@dataclass(frozen=True)
class PositionMap:
    """What goes where: `source[b][k]` of source row b is written to `target[b][k]` of target row b."""

    source: tuple[tuple[int, ...], ...]
    target: tuple[tuple[int, ...], ...]
    name: str = "explicit"

    def __post_init__(self) -> None:
        if len(self.source) != len(self.target):
            raise PatchingError(f"a PositionMap needs as many source rows as target rows "
                                f"({len(self.source)} != {len(self.target)})")
        for b, (s, t) in enumerate(zip(self.source, self.target)):
            if len(s) != len(t):
                raise PatchingError(f"PositionMap row {b}: {len(s)} source positions but {len(t)} target positions")

    @classmethod
    def same(cls, rows: Sequence[Sequence[int]], name: str = "explicit") -> "PositionMap":
        """The same positions on both sides (source and target share their layout)."""
        frozen = tuple(tuple(int(p) for p in row) for row in rows)
        return cls(frozen, frozen, name)

    @property
    def size(self) -> int:
        return sum(len(t) for t in self.target)


def map_positions(source: PassBatch, target: PassBatch, group: str | PositionMap) -> PositionMap:
    """Source -> target positions of `group` for every row; a named group maps by order within it.

    Raises `PatchingError` when the group has a different number of positions in a source row
    than in its target row (e.g. contexts of different lengths): by-order mapping would then
    be a guess; pass an explicit `PositionMap` instead.
    """
    if len(source) != len(target):
        raise PatchingError(f"source and target need one row each per case: {len(source)} != {len(target)}")
    if isinstance(group, PositionMap):
        positions(source, group.source)
        positions(target, group.target)
        return group
    src, tgt = positions(source, group), positions(target, group)
    for b, (s, t) in enumerate(zip(src, tgt)):
        if len(s) != len(t):
            raise PatchingError(
                f"row {b}: group {group!r} has {len(s)} positions in the source ({source.name} pass) and {len(t)} "
                f"in the target ({target.name} pass); a group maps by order only when the sizes agree. Pass an "
                "explicit PositionMap(source=..., target=...) to say which position goes where")
    return PositionMap(tuple(map(tuple, src)), tuple(map(tuple, tgt)), group)

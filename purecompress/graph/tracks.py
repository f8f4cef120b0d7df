"""The records of the channel trace: tracks, channel classes and the calls of table modules.

A :class:`Track` says where a tensor's channel dim is and which class each of its channels
belongs to (``-1``: none); :class:`Classes` is the union-find over those class ids, with a
blocked flag per root (no channel of a blocked class is removed); a :class:`Call` records how a
module of the replacement table was called (its input and output tracks, channel counts and dims).
:func:`~purecompress.graph.channels.trace_channels` builds them, and
:mod:`~purecompress.graph.fold` and :mod:`~purecompress.graph.propagate` read them.
"""

from __future__ import annotations

import attrs
import torch
import torch.fx as fx
from torch import Tensor

__all__ = ["Call", "Classes", "Track"]


@attrs.frozen
class Track:
    """Attributes: cd, the channel dim; ids, ``[C]`` class ids (-1: no class)."""

    cd: int
    ids: Tensor


class Classes:
    """Union-find over channel classes with a blocked flag per root."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.blocked: list[bool] = []

    def new(self, n: int) -> Tensor:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        self.blocked.extend([False] * n)
        return torch.arange(start, start + n)

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def block(self, ids: Tensor) -> None:
        for i in ids.tolist():
            if i >= 0:
                self.blocked[self.find(i)] = True

    def union(self, a: Tensor, b: Tensor) -> None:
        for x, y in zip(a.tolist(), b.tolist()):
            if x < 0 or y < 0:
                self.block(torch.tensor([x, y]))
                continue
            rx, ry = self.find(x), self.find(y)
            if rx != ry:
                self.parent[ry] = rx
                self.blocked[rx] = self.blocked[rx] or self.blocked[ry]

    def removed(self, ids: Tensor) -> Tensor:
        """``[C]`` bool: the channels whose class is removed (not blocked)."""
        return torch.tensor([i >= 0 and not self.blocked[self.find(i)] for i in ids.tolist()], dtype=torch.bool)


@attrs.define
class Call:
    """A call of a module from the replacement table (the first call, for reused modules)."""

    node: fx.Node
    kind: str
    tin: Track | None
    tout: Track | None
    c_in: int
    c_out: int
    cd_in: int
    cd_out: int
    depthwise: bool = False

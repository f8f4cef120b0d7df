"""The records pruning produces: granularity (:class:`Block`), :class:`Metric` and :class:`Mask`.

Both ``Metric`` and ``Mask`` live at **block granularity**: a tensor with one entry per block,
with as many dims as the parameter (size 1 where a whole dim is one block), plus the full
parameter shape. A channel mask on a ``[64, 32, 3, 3]`` weight is a ``[64, 1, 1, 1]`` bool tensor;
applying it broadcasts, it never builds a float copy of the weight's size.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import attrs
import torch
from torch import Tensor

from purecompress._pytree import cache, is_traced, record, static, static_record

__all__ = [
    "Block",
    "blocks_of",
    "expand_blocks",
    "unblock",
    "Mask",
    "Masks",
    "Metric",
    "Metrics",
]





@static_record
class Block:
    """A granularity: how a parameter is cut into blocks (NNI's ``Scaling``).

    Attributes:
        kernel: block size per dim; ``-1`` means the whole dim. Shorter than the parameter's
            rank, it is padded by ``padding``.
        padding: ``'front'`` pads the kernel on the left with 1 (element-wise leading dims),
            ``'back'`` pads on the right with -1 (whole trailing dims).

    >>> Block.channel().grid((64, 32, 3, 3))
    (64, 1, 1, 1)
    >>> Block((2, 3)).grid((4, 6))
    (2, 2)
    """

    kernel: tuple[int, ...] = attrs.field(converter=tuple, default=())
    padding: Literal["front", "back"] = attrs.field(
        default="front", validator=attrs.validators.in_(("front", "back"))
    )

    @kernel.validator  # type: ignore[attr-defined]  # attrs' decorator on the field
    def _check_kernel(self, attribute: attrs.Attribute, value: tuple[int, ...]) -> None:
        del attribute
        if any(isinstance(k, bool) or not isinstance(k, int) or (k < 1 and k != -1) for k in value):
            raise ValueError(f"Block kernel sizes must be positive ints or -1, got {value}")

    @classmethod
    def element(cls) -> Block:
        """One block per element (unstructured pruning)."""
        return cls(())

    @classmethod
    def channel(cls, dim: int = 0) -> Block:
        """One block per index of ``dim`` (dim 0: output channels of Conv/Linear weights)."""
        return cls((-1,) * dim + (1,), "back")

    def sizes(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """Resolve the block size per dim for a parameter of ``shape``."""
        shape = tuple(shape)
        if len(self.kernel) > len(shape):
            raise ValueError(f"Block {self.kernel} has more dims than a parameter of shape {shape}")
        pad = len(shape) - len(self.kernel)
        kernel = (1,) * pad + self.kernel if self.padding == "front" else self.kernel + (-1,) * pad
        sizes = tuple(n if k == -1 else k for k, n in zip(kernel, shape))
        if 0 in shape:
            raise ValueError(f"a parameter of shape {shape} has a zero-size dim: it has no blocks to score or prune")
        for k, n in zip(sizes, shape):
            if n % k:
                raise ValueError(f"Block sizes {sizes} do not tile a parameter of shape {shape}")
        return sizes

    def grid(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape of the per-block tensor (same rank as ``shape``)."""
        return tuple(n // k for n, k in zip(shape, self.sizes(shape)))

    def reduce(self, t: Tensor, fn: Callable[[Tensor], Tensor]) -> Tensor:
        """Apply ``fn`` (reducing the last dim) to every block of ``t``; returns the grid tensor."""
        return fn(blocks_of(t, self.grid(tuple(t.shape)))).reshape(self.grid(tuple(t.shape)))



def blocks_of(t: Tensor, grid: tuple[int, ...]) -> Tensor:
    """View ``t`` as ``[*grid, block_numel]`` (a copy only when blocks are not contiguous)."""
    sizes = [n // g for n, g in zip(t.shape, grid)]
    if all(g == 1 for g in grid[1:]):  # per leading-dim blocks: a plain reshape
        return t.reshape(*grid, sizes[0] * math.prod(t.shape[1:]))
    split = [x for pair in zip(grid, sizes) for x in pair]
    order = list(range(0, 2 * t.dim(), 2)) + list(range(1, 2 * t.dim(), 2))
    return t.reshape(split).permute(order).reshape(*grid, -1)



def _broadcastable(grid: tuple[int, ...], shape: tuple[int, ...]) -> bool:
    return all(g in (1, n) for g, n in zip(grid, shape))



def expand_blocks(t: Tensor, shape: tuple[int, ...]) -> Tensor:
    """A grid tensor shaped to broadcast against ``shape`` (a view where the grid allows)."""
    grid = tuple(t.shape)
    if _broadcastable(grid, shape):
        return t
    split = [x for g, n in zip(grid, shape) for x in (g, n // g)]
    view = t.reshape([x for g in grid for x in (g, 1)])
    return view.expand(split).reshape(shape)



@record
class Metric:
    """Importance scores at block granularity; higher means more important.

    Attributes:
        score: float tensor of the block grid's shape (same rank as the parameter).
        shape: the parameter's full shape.
    """

    score: Tensor
    shape: tuple[int, ...] = static(converter=tuple)

    @property
    def block(self) -> tuple[int, ...]:
        """Block size per dim."""
        return tuple(n // g for n, g in zip(self.shape, self.score.shape))

    @property
    def block_numel(self) -> int:
        """Elements per block."""
        return math.prod(self.block)



@record
class Mask:
    """Which blocks of a parameter are kept.

    Attributes:
        keep: bool tensor at block granularity (True = kept), same rank as the parameter.
        shape: the parameter's full shape.
    """

    keep: Tensor
    shape: tuple[int, ...] = static(converter=tuple)
    _multipliers: dict[tuple[torch.dtype, torch.device], tuple[int, Tensor]] = cache()

    @classmethod
    def dense(cls, shape: tuple[int, ...]) -> Mask:
        """A mask that keeps everything (one block)."""
        return cls(torch.ones((1,) * len(shape), dtype=torch.bool), tuple(shape))

    @classmethod
    def from_dense(cls, mask: Tensor) -> Mask:
        """Element-granularity mask from a 0/1 (or bool) tensor of the parameter's shape."""
        return cls(mask != 0, tuple(mask.shape))

    @property
    def block(self) -> tuple[int, ...]:
        """Block size per dim."""
        return tuple(n // g for n, g in zip(self.shape, self.keep.shape))

    @property
    def block_numel(self) -> int:
        """Elements per block."""
        return math.prod(self.block)

    def broadcastable(self) -> Tensor:
        """``keep`` shaped to broadcast against the parameter (a view for channel masks)."""
        return expand_blocks(self.keep, self.shape)

    def apply(self, t: Tensor) -> Tensor:
        """``t`` with pruned blocks set to zero (a new tensor; differentiable in ``t``)."""
        trailing = tuple(t.shape[t.dim() - len(self.shape):]) if t.dim() >= len(self.shape) else None
        if trailing != self.shape:
            raise ValueError(f"mask for shape {self.shape} applied to a tensor of shape {tuple(t.shape)}")
        return t * self._multiplier_for(t)

    def _multiplier_for(self, t: Tensor) -> Tensor:
        """``keep`` as 0/1 of ``t``'s dtype and device, broadcastable to it: a same-dtype multiply
        is the fast kernel forward and backward.

        Memoised per (dtype, device) together with ``keep``'s version counter, so an in-place edit
        of ``keep`` (or of a tensor it is a view of) is seen at the next call, and calls from
        several threads with different dtypes each get their own entry. Derived afresh under
        transforms (``keep`` may be batched or traced) and for inference tensors (no version
        counter)."""
        keep = self.broadcastable()
        if is_traced(keep) or is_traced(t) or self.keep.is_inference():
            return keep.to(t.dtype)
        key = (t.dtype, t.device)
        version = self.keep._version
        hit = self._multipliers.get(key)
        if hit is None or hit[0] != version:
            hit = (version, keep.to(dtype=t.dtype, device=t.device))
            self._multipliers[key] = hit
        return hit[1]

    def to_dense(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """The 0/1 tensor of the parameter's full shape (NNI's mask format)."""
        return self.broadcastable().expand(self.shape).to(dtype)

    def kept(self) -> Tensor:
        """Number of kept elements (a 0-dim tensor)."""
        return self.keep.sum() * self.block_numel

    def sparsity(self) -> float:
        """Fraction of elements pruned."""
        numel = math.prod(self.shape)
        return 1.0 - float(self.kept()) / numel if numel else 0.0

    def __and__(self, other: Mask) -> Mask:
        """Keep only what both masks keep (grid of the finer one)."""
        if self.shape != other.shape:
            raise ValueError(f"cannot combine masks of shapes {self.shape} and {other.shape}")
        if self.keep.shape == other.keep.shape:
            return Mask(self.keep & other.keep, self.shape)
        # lcm: the coarsest grid finer than both (both block counts divide the dim, so it does).
        grid = tuple(math.lcm(a, b) for a, b in zip(self.keep.shape, other.keep.shape))
        return Mask(_regrid(self, grid) & _regrid(other, grid), self.shape)



def _regrid(mask: Mask, grid: tuple[int, ...]) -> Tensor:
    """Expand a mask's grid to a finer grid that its blocks tile."""
    keep = mask.keep
    for dim, (g_old, g_new) in enumerate(zip(keep.shape, grid)):
        if g_new % g_old:
            raise ValueError(f"mask grids {tuple(mask.keep.shape)} and {grid} do not nest")
        keep = keep.repeat_interleave(g_new // g_old, dim=dim)
    return keep



Masks = dict[str, Mask]


Metrics = dict[str, Metric]



def unblock(blocks: Tensor, grid: tuple[int, ...]) -> Tensor:
    """Inverse of :func:`blocks_of`: ``[*bank_grid, bank_numel]`` back to a tensor of ``grid``."""
    bank_grid = tuple(blocks.shape[:-1])
    sizes = [n // g for n, g in zip(grid, bank_grid)]
    t = blocks.reshape(*bank_grid, *sizes)
    order = [x for i in range(len(grid)) for x in (i, i + len(grid))]
    return t.permute(order).reshape(grid)

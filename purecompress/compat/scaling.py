"""NNI's ``Scaling``: a block granularity with NNI's shapes (reduced whole dims are squeezed).

Same as ``nni.algorithms.compression.v2.pytorch.utils.Scaling``, but a thin layer over
:class:`purecompress.Block`: ``shrink`` reduces each block with the core's block view, ``expand``
broadcasts each value over its block.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import Tensor

from purecompress.records import Block, expand_blocks

__all__ = ["Scaling"]


class Scaling:
    """A scaling kernel (block size per dim, ``-1`` = the whole dim, squeezed after shrinking).

    Args:
        kernel_size: block size per dim; shorter than a tensor's rank, it is padded.
        kernel_padding_mode: ``'front'`` pads the kernel on the left with 1, ``'back'`` pads it on
            the right with -1 (``Scaling([1], 'back')`` = one value per output channel).

    >>> Scaling([2, 3]).shrink(torch.arange(24.).view(4, 6))
    tensor([[ 4.,  7.],
            [16., 19.]])
    >>> Scaling([1], 'back').shrink(torch.ones(3, 3, 3), lambda t: t.norm(dim=-1))
    tensor([3., 3., 3.])
    >>> Scaling([5]).shrink(torch.ones(10, 10)).shape
    torch.Size([10, 2])
    """

    def __init__(self, kernel_size: Sequence[int], kernel_padding_mode: Literal["front", "back"] = "front") -> None:
        if kernel_padding_mode not in ("front", "back"):
            raise ValueError(f"kernel_padding_mode should be one of ['front', 'back'], got {kernel_padding_mode!r}")
        self.kernel_size = list(kernel_size)
        self.kernel_padding_mode = kernel_padding_mode
        self.block = Block(tuple(kernel_size), kernel_padding_mode)

    def __repr__(self) -> str:
        return f"Scaling({self.kernel_size}, kernel_padding_mode={self.kernel_padding_mode!r})"

    def padded_kernel(self, rank: int) -> list[int]:
        """The kernel padded to ``rank`` dims (NNI's canonical kernel)."""
        if len(self.kernel_size) > rank:
            raise ValueError(f"kernel_size {self.kernel_size} has more dims than a tensor of rank {rank}")
        pad = rank - len(self.kernel_size)
        if self.kernel_padding_mode == "front":
            return [1] * pad + self.kernel_size
        return self.kernel_size + [-1] * pad

    def squeezed_dims(self, rank: int) -> list[int]:
        """Dims that shrinking removes (where the padded kernel is -1)."""
        return [d for d, k in enumerate(self.padded_kernel(rank)) if k == -1]

    def grid(self, shape: Sequence[int]) -> tuple[int, ...]:
        """The unsqueezed block grid of a tensor of ``shape`` (the core's ``Block.grid``)."""
        return self.block.grid(tuple(shape))

    def shrink(self, target: Tensor, reduce_func: Callable[[Tensor], Tensor] | None = None) -> Tensor:
        """Reduce each block of ``target`` to one value (default: the mean).

        Args:
            target: tensor of any shape the kernel tiles.
            reduce_func: maps ``[*grid, block_numel]`` to ``grid`` (reduces the last dim).

        Returns:
            The grid tensor with the kernel's ``-1`` dims squeezed.
        """
        reduced = self.block.reduce(target, reduce_func or (lambda t: t.mean(-1)))
        keep = [n for d, n in enumerate(reduced.shape) if d not in self.squeezed_dims(target.dim())]
        return reduced.reshape(keep)

    def expand(self, target: Tensor, expand_size: Sequence[int]) -> Tensor:
        """Repeat each value of ``target`` (a shrunk tensor) over its block of a tensor of ``expand_size``."""
        size = tuple(int(n) for n in expand_size)
        grid = self.grid(size)
        if target.numel() != torch.Size(grid).numel():
            raise ValueError(f"cannot expand a tensor of shape {tuple(target.shape)} to {list(size)} with "
                             f"kernel size {self.kernel_size} ({self.kernel_padding_mode})")
        return expand_blocks(target.reshape(grid), size).expand(size).clone()

    def validate(self, target: Sequence[int] | Tensor) -> None:
        """Raise ValueError unless shrinking then expanding a tensor of this shape is shape-lossless."""
        shape = tuple(target.shape) if isinstance(target, Tensor) else tuple(target)
        try:
            out = self.expand(self.shrink(torch.zeros(shape)), shape)
        except ValueError as err:
            raise ValueError(f"The tensor with shape {list(shape)} can not shape-lossless scaling with kernel "
                             f"size {self.kernel_size} and kernel_padding_mode {self.kernel_padding_mode}") from err
        if tuple(out.shape) != shape:
            raise ValueError(f"The tensor with shape {list(shape)} can not shape-lossless scaling with kernel "
                             f"size {self.kernel_size} and kernel_padding_mode {self.kernel_padding_mode}")


def _channel_scaler() -> Scaling:
    """One value per output channel (``Scaling([1], 'back')``), the scaling of NNI's channel pruners."""
    return Scaling([1], kernel_padding_mode="back")

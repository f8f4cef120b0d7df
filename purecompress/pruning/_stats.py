"""Statistics gathered from data, as records and the per-step math that builds them.

:class:`ActivationStats` (APoZ and mean-activation counts per output channel) and
:class:`TaylorStats` (sums of ``(w * grad)**2``) are what :mod:`purecompress.pruning`'s collectors
return, what :mod:`purecompress.pruning` turns into metrics and what
:func:`purecompress.all_reduce_stats` sums over ranks. The per-step functions
(:func:`batch_activation_stats`, :func:`taylor_accumulate`) also serve users who gather
statistics inside their own training loops.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn

from purecompress._pytree import record, static

__all__ = [
    "ActivationStats",
    "TaylorStats",
    "activation_fn",
    "batch_activation_stats",
    "channel_dim_of",
    "taylor_accumulate",
    "taylor_term",
]


Activation = str | Callable[[Tensor], Tensor]


_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": torch.nn.functional.relu,
    "gelu": torch.nn.functional.gelu,
    "relu6": torch.nn.functional.relu6,
}



@record
class ActivationStats:
    """Per-channel statistics of ``activation(output)`` of one layer.

    Attributes:
        zeros: ``[C]`` float64, how many entries were exactly 0 (APoZ).
        total: ``[C]`` float64, sum of the entries (mean rank).
        samples: number of outputs counted (product of the dims before the channel dim).
        positions: entries per channel per sample (``H*W`` for Conv2d, 1 for Linear).
        batches: number of forward calls counted.
    """

    zeros: Tensor
    total: Tensor
    samples: int = static()
    positions: int = static()
    batches: int = static()

    def __add__(self, other: ActivationStats) -> ActivationStats:
        if self.positions != other.positions or self.zeros.shape != other.zeros.shape:
            raise ValueError("cannot add activation statistics of differently shaped outputs")
        return ActivationStats(self.zeros + other.zeros, self.total + other.total,
                               self.samples + other.samples, self.positions, self.batches + other.batches)

    def zero_fraction(self) -> Tensor:
        """``[C]``: fraction of entries that were zero (the APoZ of each channel)."""
        return self.zeros / max(self.samples * self.positions, 1)

    def mean(self) -> Tensor:
        """``[C]``: mean activation of each channel."""
        return self.total / max(self.samples * self.positions, 1)



@record
class TaylorStats:
    """First-order Taylor statistics of one parameter.

    Attributes:
        score: the parameter's shape: sum over steps of ``(w * grad)**2``.
        steps: number of gradients accumulated.
    """

    score: Tensor
    steps: int = static()



def activation_fn(activation: Activation) -> Callable[[Tensor], Tensor]:
    """``'relu'``, ``'gelu'``, ``'relu6'`` (NNI's choices) or any callable."""
    if callable(activation):
        return activation
    if activation not in _ACTIVATIONS:
        raise ValueError(f"unsupported activation {activation!r}; use one of {sorted(_ACTIVATIONS)} or a callable")
    return _ACTIVATIONS[activation]



def channel_dim_of(module: nn.Module) -> int:
    """The (negative) channel dim of a layer's output: -1 for Linear, ``-(d+1)`` for ConvNd.

    >>> channel_dim_of(nn.Conv2d(1, 2, 3)), channel_dim_of(nn.Linear(2, 3))
    (-3, -1)
    """
    if isinstance(module, (nn.Linear, nn.Bilinear)):
        return -1
    for dims, types in ((1, (nn.Conv1d, nn.ConvTranspose1d)), (2, (nn.Conv2d, nn.ConvTranspose2d)),
                        (3, (nn.Conv3d, nn.ConvTranspose3d))):
        if isinstance(module, types):
            return -(dims + 1)
    raise TypeError(f"activation statistics support Conv1d/2d/3d, ConvTranspose and Linear layers, "
                    f"not {type(module).__name__}")



def batch_activation_stats(output: Tensor, channel_dim: int, activation: Activation = "relu") -> ActivationStats:
    """Statistics of one output tensor (one forward call).

    Args:
        output: the layer's output, e.g. ``[N, C, H, W]`` (channel dim ``-3``) or ``[N, C]`` (``-1``).
        channel_dim: negative index of the channel dim (:func:`channel_dim_of`).
        activation: applied to ``output`` before counting.

    >>> s = batch_activation_stats(torch.tensor([[1., -2.], [0., 3.]]), -1)
    >>> s.zeros.tolist(), s.total.tolist(), s.samples
    ([1.0, 1.0], [1.0, 3.0], 2)
    """
    act = activation_fn(activation)(output.detach())
    cdim = act.dim() + channel_dim
    dims = [d for d in range(act.dim()) if d != cdim]
    samples, positions = 1, 1
    for d, n in enumerate(act.shape):
        if d < cdim:
            samples *= int(n)
        elif d > cdim:
            positions *= int(n)
    if not dims:
        return ActivationStats((act == 0).double(), act.double(), samples, positions, 1)
    # Reduce in place of a channel-first copy; counts are exact integers, sums accumulate in the
    # activation's dtype (as NNI's float32 buffers do) and are stored as float64.
    return ActivationStats((act == 0).sum(dims).double(), act.sum(dims).double(), samples, positions, 1)



def taylor_term(weight: Tensor, gradient: Tensor) -> Tensor:
    """``(w * g)**2``: one step's first-order Taylor importance of each weight."""
    return (weight.detach() * gradient.detach()).pow(2)



def taylor_accumulate(stats: Mapping[str, TaylorStats], params: Mapping[str, Tensor],
                      grads: Mapping[str, Tensor]) -> dict[str, TaylorStats]:
    """Add one step's ``(w * g)**2`` to ``stats`` (a new dict; names missing from ``stats`` start at 0).

    Call it inside a training loop with the gradients of each step. Under DDP, sum the result over
    the ranks with :func:`purecompress.all_reduce_stats` before computing metrics.

    >>> w, g = {'w': torch.tensor([1., 2.])}, {'w': torch.tensor([3., 1.])}
    >>> taylor_accumulate({}, w, g)['w'].score
    tensor([9., 4.])
    """
    out = dict(stats)
    for name, g in grads.items():
        term = taylor_term(params[name], g)
        old = stats.get(name)
        out[name] = TaylorStats(term, 1) if old is None else TaylorStats(old.score + term, old.steps + 1)
    return out

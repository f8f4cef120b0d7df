"""Observers as pure state updates: a :class:`Range` in, a new :class:`Range` out.

Per-tensor ranges are 0-d; per-channel ranges are ``[C]`` along ``axis`` (NNI: weights keep dim 0,
activations keep dim 1, every other dim is reduced). Nothing is written in place.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from purecompress._pytree import record
from purecompress.quant import hostmath

__all__ = ["EMA_DECAY", "Histogram", "Range", "current_range", "ema_range", "histogram_estimate", "histogram_range",
           "minmax_range"]

#: NNI QAT's activation EMA decay.
EMA_DECAY = 0.99


@record
class Range:
    """An observed (tracked) range.

    Attributes:
        min: ``[]`` per tensor or ``[C]`` per channel.
        max: same shape as ``min``.
    """

    min: Tensor
    max: Tensor


def current_range(x: Tensor, *, axis: int | None = None) -> Range:
    """Min and max of ``x``: over everything (``axis=None``) or per channel along ``axis``.

    >>> r = current_range(torch.tensor([[1., -2.], [3., 4.]]), axis=1)
    >>> r.min, r.max
    (tensor([ 1., -2.]), tensor([3., 4.]))
    """
    x = x.detach()
    if axis is None:
        lo, hi = torch.aminmax(x)
        return Range(lo, hi)
    lo, hi = torch.aminmax(x.movedim(axis, 0).reshape(x.shape[axis], -1), dim=1)
    return Range(lo, hi)


def current_mean(x: Tensor, *, axis: int | None = None) -> Tensor:
    """Mean of ``x``: over everything (``axis=None``, a scalar) or per channel along ``axis`` (``[C]``).

    >>> current_mean(torch.tensor([[1., -2.], [3., 4.]]), axis=1)
    tensor([2., 1.])
    """
    x = x.detach()
    if axis is None:
        return x.mean()
    return x.movedim(axis, 0).reshape(x.shape[axis], -1).mean(dim=1)


def minmax_range(prev: Range | None, x: Tensor, *, axis: int | None = None) -> Range:
    """Running min/max: the union of ``prev`` and the range of ``x`` (first call: ``x``'s range).

    >>> r = minmax_range(None, torch.tensor([1., 2.]))
    >>> r = minmax_range(r, torch.tensor([-1., 0.]))
    >>> r.min.item(), r.max.item()
    (-1.0, 2.0)
    """
    cur = current_range(x, axis=axis)
    if prev is None:
        return cur
    return Range(torch.minimum(prev.min, cur.min), torch.maximum(prev.max, cur.max))


def ema_range(
    prev: Range | None,
    x: Tensor,
    *,
    decay: float = EMA_DECAY,
    axis: int | None = None,
    first: Tensor | bool | None = None,
    current: Range | None = None,
) -> Range:
    """Exponential moving average of the range of ``x`` (NNI QAT's activation tracker).

    ``tracked = decay * tracked + (1 - decay) * current``, where on the first step ``tracked`` is
    first reset to the current range (so the result is the current range up to rounding), as NNI
    does while ``steps == 1``.

    Args:
        prev: the tracked range, or None (then this is the first step).
        x: the observed tensor.
        decay: weight of the previous value.
        axis: per-channel dimension (1 for activations) or None.
        first: a bool tensor (traceable) or bool saying this is the first step; default
            ``prev is None``.
        current: ``current_range(x, axis=axis)`` when the caller already has it (saves a pass).

    >>> relu = torch.nn.functional.relu
    >>> r = ema_range(None, relu(torch.tensor([[-0.2, 0.], [0.1, 0.2]])))
    >>> r = ema_range(r, torch.tensor([[.2, .4], [.6, .8]]))
    >>> round(r.min.item(), 6), round(r.max.item(), 6)
    (0.002, 0.206)
    """
    cur = current_range(x, axis=axis) if current is None else current
    if prev is None or first is True:
        prev = cur
    elif isinstance(first, Tensor):
        prev = Range(torch.where(first, cur.min, prev.min), torch.where(first, cur.max, prev.max))
    if isinstance(decay, (float, int)) and (host := hostmath.read(prev.min, prev.max, cur.min, cur.max)):
        rnd, v = host
        lo, hi = hostmath.ema((v[0], v[1]), (v[2], v[3]), decay, rnd)
        return Range(hostmath.scalar(lo, cur.min), hostmath.scalar(hi, cur.min))
    return Range(prev.min * decay + (1 - decay) * cur.min, prev.max * decay + (1 - decay) * cur.max)


@record
class Histogram:
    """A running histogram of observed values (torch's ``HistogramObserver`` state, as data).

    Attributes:
        counts: ``[bins]`` counts over ``[min, max]``.
        min: ``[]`` smallest value seen.
        max: ``[]`` largest value seen.
    """

    counts: Tensor
    min: Tensor
    max: Tensor

    @property
    def empty(self) -> bool:
        """Whether no value has been observed (only empty batches: the range is ``[inf, -inf]``)."""
        return not bool(self.counts.sum() > 0)


def _histogram_observer(state: Histogram | None) -> torch.ao.quantization.HistogramObserver:
    with warnings.catch_warnings():  # torch's deprecation note on reduce_range (NNI's setting)
        warnings.simplefilter("ignore", UserWarning)
        observer = torch.ao.quantization.HistogramObserver(reduce_range=True)
    if state is not None:  # a fresh observer holding a copy of the state: nothing given is modified
        observer.histogram = state.counts.clone()
        observer.min_val = state.min.clone()
        observer.max_val = state.max.clone()
    return observer


def histogram_range(prev: Histogram | None, x: Tensor) -> Histogram:
    """The running histogram with ``x`` added (torch's ``HistogramObserver``, 2048 bins, its
    re-binning when the range grows; NNI's ``ObserverQuantizer`` activations). On CPU.

    >>> h = histogram_range(histogram_range(None, torch.tensor([0., 1.])), torch.tensor([2.]))
    >>> h.min.item(), h.max.item(), h.counts.sum().item()
    (0.0, 2.0, 3.0)
    """
    observer = _histogram_observer(prev)
    observer(x.detach().cpu())
    return Histogram(observer.histogram.clone(), observer.min_val.clone(), observer.max_val.clone())


def histogram_estimate(h: Histogram) -> Range:
    """The range torch's ``HistogramObserver`` picks from ``h``: the L2-optimal clipping of its
    non-linear search (for 7-bit unsigned codes, NNI's ``reduce_range=True``), ``[]`` each.

    >>> r = histogram_estimate(histogram_range(None, torch.arange(100.)))
    >>> 0.0 <= r.min.item() <= r.max.item() <= 99.0
    True

    Raises:
        ValueError: ``h`` is :attr:`~Histogram.empty` (fast, instead of a NaN range).
    """
    if h.empty:  # torch's search would run for seconds on the range [inf, -inf] and give NaN
        raise ValueError("the histogram has observed no values (only empty batches, or none): "
                         "there is no range to estimate")
    lo, hi = _histogram_observer(h)._non_linear_param_search()
    return Range(lo.reshape(()), hi.reshape(()))

"""NNI's metrics calculators: ``{module: {target: data}} -> {module: {target: metric}}``.

Same as ``nni...pruning.tools.metrics_calculator`` (2.10), but each value is computed by a core
metric (:func:`purecompress.lp_norm`, :func:`purecompress.fpgm`, :func:`purecompress.metric_by`)
over the scaler's block grid; the result has NNI's shape (the scaler's ``-1`` dims squeezed).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping

from torch import Tensor

from purecompress.compat.scaling import Scaling
from purecompress.compat.sparsity_allocator import Scalers, get_scaler, normalize_scalers
from purecompress.metrics import fpgm, lp_norm, metric_by
from purecompress.records import Metric

__all__ = ["DistMetricsCalculator", "MetricsCalculator", "NormMetricsCalculator", "StraightMetricsCalculator"]

NniData = Mapping[str, Mapping[str, Tensor]]
NniMetrics = dict[str, dict[str, Tensor]]
CoreMetric = Callable[[Mapping[str, Tensor], list[str], Scaling], Mapping[str, Metric]]


def _order(p: float | str | None) -> float:
    """NNI's ``p``: None or 'fro' is the 2-norm."""
    return 2.0 if p is None or p == "fro" else float(p)


class MetricsCalculator(abc.ABC):
    """Abstract calculator.

    Args:
        scalers: block granularity (one :class:`Scaling`, or ``{module|'_default': {target|'_default': Scaling}}``);
            None means one metric value per element.
    """

    def __init__(self, scalers: Scalers | Scaling | None = None) -> None:
        self.scalers = normalize_scalers(scalers)

    def _get_scaler(self, module_name: str, target_name: str) -> Scaling:
        return get_scaler(self.scalers, module_name, target_name) or Scaling([1])

    def _each(self, data: NniData, metric: CoreMetric) -> NniMetrics:
        """Run a core metric on every target; reshape to NNI's (squeezed) metric shape."""
        out: NniMetrics = {}
        for module_name, targets in data.items():
            out[module_name] = {}
            for target, tensor in targets.items():
                scaler = self._get_scaler(module_name, target)
                score = metric({target: tensor}, [target], scaler)[target].score
                dims = scaler.squeezed_dims(tensor.dim())
                out[module_name][target] = score.reshape([n for d, n in enumerate(score.shape) if d not in dims])
        return out

    @abc.abstractmethod
    def calculate_metrics(self, data: NniData) -> NniMetrics:
        """``{module: {target: metric}}``; higher = more important."""


class StraightMetricsCalculator(MetricsCalculator):
    """The data itself (the mean of each block) is the metric."""

    def calculate_metrics(self, data: NniData) -> NniMetrics:
        return self._each(data, lambda p, t, s: metric_by(p, t, lambda b: b.mean(-1), block=s.block))


class NormMetricsCalculator(MetricsCalculator):
    """The ``p``-norm of each block (Level, L1, L2 pruners).

    Args:
        p: norm order; None means 2 (NNI's 'fro').
        scalers: see :class:`MetricsCalculator`.

    >>> import torch
    >>> NormMetricsCalculator(2, Scaling([1], 'back')).calculate_metrics({'c': {'weight': torch.ones(3, 3, 3)}})
    {'c': {'weight': tensor([3., 3., 3.])}}
    """

    def __init__(self, p: float | str | None = None, scalers: Scalers | Scaling | None = None) -> None:
        super().__init__(scalers)
        self.p = p if p is not None else "fro"

    def calculate_metrics(self, data: NniData) -> NniMetrics:
        return self._each(data, lambda params, t, s: lp_norm(params, t, p=_order(self.p), block=s.block))


class DistMetricsCalculator(MetricsCalculator):
    """Each block's summed ``p``-distance to all other blocks (FPGM).

    Args:
        p: distance order; None means 2.
        scalers: see :class:`MetricsCalculator`.

    >>> import torch
    >>> calc = DistMetricsCalculator(2, Scaling([1], 'back'))
    >>> calc.calculate_metrics({'c': {'weight': torch.tensor([[1., 2.], [4., 6.]])}})
    {'c': {'weight': tensor([5., 5.])}}
    """

    def __init__(self, p: float | str | None = None, scalers: Scalers | Scaling | None = None) -> None:
        super().__init__(scalers)
        self.p = p if p is not None else "fro"

    def calculate_metrics(self, data: NniData) -> NniMetrics:
        return self._each(data, lambda params, t, s: fpgm(params, t, p=_order(self.p), block=s.block))

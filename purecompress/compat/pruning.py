"""NNI's one-shot pruners: ``BasicPruner``, ``LevelPruner``, ``L1NormPruner``, ``L2NormPruner``, ``FPGMPruner``.

Same names, constructor signatures and results as ``nni.compression.pytorch.pruning`` (2.10).
Each pruner is three tools (collector -> metrics calculator -> allocator) whose numbers come from
the core; a new one-shot pruner is a ``reset_tools`` that picks them.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from purecompress.compat._schema import EXCLUDE, INTERNAL, NORMAL
from purecompress.compat.base import NniMasks, Pruner
from purecompress.compat.data_collector import DataCollector, TargetDataCollector
from purecompress.compat.metrics_calculator import DistMetricsCalculator, MetricsCalculator, NormMetricsCalculator
from purecompress.compat.scaling import _channel_scaler
from purecompress.compat.sparsity_allocator import (
    BankSparsityAllocator,
    NormalSparsityAllocator,
    SparsityAllocator,
)

__all__ = ["BasicPruner", "FPGMPruner", "L1NormPruner", "L2NormPruner", "LevelPruner"]

_CHANNEL_TYPES = ("Conv2d", "Linear")


def _check_mode(name: str, mode: str, allowed: Sequence[str]) -> str:
    if mode not in allowed:
        raise ValueError(f"{name}: mode must be one of {list(allowed)}, got {mode!r}")
    return mode


class BasicPruner(Pruner):
    """A pruner made of three tools: ``data_collector``, ``metrics_calculator``, ``sparsity_allocator``.

    Subclasses implement :meth:`reset_tools`. A script may replace a tool after construction
    (e.g. ``pruner.sparsity_allocator = GlobalSparsityAllocator(pruner)``); ``reset`` keeps it.
    """

    data_collector: DataCollector | None = None
    metrics_calculator: MetricsCalculator | None = None
    sparsity_allocator: SparsityAllocator | None = None

    def compress(self) -> tuple[nn.Module, NniMasks]:
        """collect -> calculate_metrics -> generate_sparsity -> load_masks; returns ``(model, masks)``."""
        model = self._bound()
        if self.data_collector is None or self.metrics_calculator is None or self.sparsity_allocator is None:
            raise RuntimeError(f"{type(self).__name__} has no data_collector/metrics_calculator/sparsity_allocator; "
                               "reset_tools() must set them")
        data = self.data_collector.collect()
        metrics = self.metrics_calculator.calculate_metrics(data)
        masks = self.sparsity_allocator.generate_sparsity(metrics)
        self.load_masks(masks)
        return model, masks


class LevelPruner(BasicPruner):
    """Fine-grained magnitude pruning: each layer prunes its smallest ``|w|``.

    Args:
        model: the model.
        config_list: ``sparsity``/``sparsity_per_layer``, ``op_types`` (any, incl. 'default'),
            ``op_names``, ``op_partial_names``, ``exclude``.
        mode: ``'normal'``, or ``'balance'``: prune the same fraction inside every block of
            ``balance_gran`` (right-aligned to the weight's dims).
        balance_gran: block shape for ``'balance'``, e.g. ``[5]``.
    """

    config_forms = (NORMAL, EXCLUDE, INTERNAL)

    def __init__(self, model: nn.Module | None, config_list: list[dict] | None, mode: str = "normal",
                 balance_gran: Sequence[int] | None = None) -> None:
        self.mode = _check_mode("LevelPruner", mode, ("normal", "balance"))
        if mode == "balance" and balance_gran is None:
            raise ValueError("LevelPruner(mode='balance') needs balance_gran, e.g. [5]")
        self.balance_gran = list(balance_gran) if balance_gran is not None else None
        super().__init__(model, config_list)

    def reset_tools(self) -> None:
        """Weight collector, element-wise norm, per-layer or bank allocator."""
        _reset_collector(self)
        self.metrics_calculator = self.metrics_calculator or NormMetricsCalculator()
        if self.sparsity_allocator is None:
            self.sparsity_allocator = NormalSparsityAllocator(self) if self.mode == "normal" else \
                BankSparsityAllocator(self, self.balance_gran)  # type: ignore[arg-type]


def _reset_collector(pruner: BasicPruner) -> None:
    if pruner.data_collector is None:
        pruner.data_collector = TargetDataCollector(pruner)
    else:
        pruner.data_collector.reset()


class _ChannelPruner(BasicPruner):
    """Shared set-up of the per-output-channel pruners (abstract: leaves pick the metric)."""

    config_forms = (NORMAL, EXCLUDE, INTERNAL)
    supported_op_types = _CHANNEL_TYPES

    def __init__(self, model: nn.Module | None, config_list: list[dict] | None, mode: str = "normal",
                 dummy_input: Tensor | None = None) -> None:
        self.mode = _check_mode(type(self).__name__, mode, ("normal", "dependency_aware"))
        self.dummy_input = dummy_input
        super().__init__(model, config_list)

    def _channel_tools(self, metric: MetricsCalculator) -> None:
        scalers = _channel_scaler()
        _reset_collector(self)
        self.metrics_calculator = self.metrics_calculator or metric
        if self.sparsity_allocator is None:
            if self.mode == "dependency_aware":
                # Imported here: the allocator lives with the graph-based pruners, which import this module.
                from purecompress.compat.training_pruners import DependencyAwareAllocator

                self.sparsity_allocator = DependencyAwareAllocator(self, self.dummy_input, scalers)
            else:
                self.sparsity_allocator = NormalSparsityAllocator(self, scalers)


class L1NormPruner(_ChannelPruner):
    """Prunes the output channels (conv filters, linear rows) with the smallest L1 norm.

    Args:
        model: the model.
        config_list: ``sparsity``, ``op_types`` (Conv2d, Linear), ``op_names``, ``op_partial_names``, ``exclude``.
        mode: ``'normal'``, or ``'dependency_aware'``: layers whose channels meet (add, cat, groups)
            share one mask (:class:`~purecompress.compat.training_pruners.DependencyAwareAllocator`).
        dummy_input: an example input, required by ``'dependency_aware'``.
    """

    p = 1  # NNI's NormPruner attribute

    def reset_tools(self) -> None:
        """Weight collector, L1 norm per output channel, per-layer allocator."""
        self._channel_tools(NormMetricsCalculator(p=self.p, scalers=_channel_scaler()))


class L2NormPruner(_ChannelPruner):
    """Prunes the output channels with the smallest L2 norm (arguments as :class:`L1NormPruner`)."""

    p = 2  # NNI's NormPruner attribute

    def reset_tools(self) -> None:
        """Weight collector, L2 norm per output channel, per-layer allocator."""
        self._channel_tools(NormMetricsCalculator(p=self.p, scalers=_channel_scaler()))


class FPGMPruner(_ChannelPruner):
    """Prunes the output channels nearest the geometric median (arguments as :class:`L1NormPruner`)."""

    def reset_tools(self) -> None:
        """Weight collector, summed distance per output channel, per-layer allocator."""
        self._channel_tools(DistMetricsCalculator(p=2, scalers=_channel_scaler()))

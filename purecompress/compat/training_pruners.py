"""NNI's training-aware pruners: Slim, APoZ, mean rank, Taylor FO, ADMM, movement; dependency-aware.

Same names, constructor signatures (both NNI APIs) and results as NNI 2.10's
``nni.compression.pytorch.pruning``. Every pruner drives the user's training through an
:class:`~purecompress.compat.evaluator.Evaluator` (the old ``trainer, traced_optimizer,
criterion`` API is adapted by :class:`~purecompress.compat.evaluator.LegacyEvaluator`), collects
with hooks that call the core (:mod:`purecompress.collect`), and allocates with core allocators.

NNI quirk kept for parity: the activation pruners count **samples** (not batches) toward
``training_steps``/``training_batches``: statistics stop accumulating once the samples seen
reach it (batch size 10, ``training_steps=5``: only the first batch counts). Taylor counts
gradient steps. The functional API (:func:`purecompress.collect_activations`) counts batches.

Under ``torch.distributed`` (DDP) every pruner gives the same masks on every rank: the hook
collectors sum their statistics over the ranks (each rank counts ``training_steps`` of its own
data; the metric is what one process computes on the ranks' steps together), movement averages
its score gradients as DDP averages the weights', and Slim/ADMM read weights DDP keeps equal.

This module holds Slim, the activation pruners and Taylor; it re-exports ADMM
(:mod:`~purecompress.compat.admm_pruner`), movement (:mod:`~purecompress.compat.movement_pruner`)
and the tools (:mod:`~purecompress.compat.training_tools`) so every name keeps this path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from purecompress.compat._schema import EXCLUDE, GLOBAL, INTERNAL, NORMAL
from purecompress.compat.admm_pruner import ADMMPruner
from purecompress.compat.evaluator import ForwardHook, TensorHook
from purecompress.compat.metrics_calculator import MetricsCalculator, NormMetricsCalculator
from purecompress.compat.movement_pruner import MovementPruner
from purecompress.compat.pruning import _CHANNEL_TYPES, _check_mode
from purecompress.compat.scaling import _channel_scaler
from purecompress.compat.sparsity_allocator import GlobalSparsityAllocator, NormalSparsityAllocator
from purecompress.compat.training_base import _TrainingPruner
from purecompress.compat.training_tools import (
    APoZRankMetricsCalculator,
    DependencyAwareAllocator,
    EvaluatorBasedHookDataCollector,
    EvaluatorBasedTargetDataCollector,
    HookDataNormMetricsCalculator,
    MeanRankMetricsCalculator,
)
from purecompress.metrics_data import slim_penalty
from purecompress.stats import TaylorStats, activation_fn, batch_activation_stats, channel_dim_of, taylor_term

__all__ = [
    "ADMMPruner",
    "APoZRankMetricsCalculator",
    "ActivationAPoZRankPruner",
    "ActivationMeanRankPruner",
    "DependencyAwareAllocator",
    "EvaluatorBasedHookDataCollector",
    "EvaluatorBasedTargetDataCollector",
    "HookDataNormMetricsCalculator",
    "MeanRankMetricsCalculator",
    "MovementPruner",
    "SlimPruner",
    "TaylorFOWeightPruner",
]



class SlimPruner(_TrainingPruner):
    """Network slimming: train with ``scale * sum|gamma|`` added, prune the smallest BN ``|gamma|``.

    ``SlimPruner(model, config_list, evaluator, training_epochs, scale=1e-4, mode='global')`` or
    the old ``SlimPruner(model, config_list, trainer, traced_optimizer, criterion, training_epochs,
    scale=1e-4, mode='global')``. ``op_types``: BatchNorm2d. ``mode``: 'global' (configs with
    ``total_sparsity``) or 'normal'.
    """

    new_api = ("evaluator", "training_epochs", "scale", "mode")
    old_api = ("trainer", "traced_optimizer", "criterion", "training_epochs", "scale", "mode")
    defaults = {"scale": 0.0001, "mode": "global"}
    supported_op_types = ("BatchNorm2d",)

    def __init__(self, model: nn.Module | None, config_list: list[dict] | None, *args: Any, **kwargs: Any) -> None:
        parsed = self._init_training(model, args, kwargs)
        self.training_epochs, self._scale = parsed["training_epochs"], parsed["scale"]
        self.mode = _check_mode("SlimPruner", parsed["mode"], ("normal", "global"))
        self.config_forms = (EXCLUDE, INTERNAL, GLOBAL if self.mode == "global" else NORMAL)
        super().__init__(model, config_list)

    def loss_patch(self, origin_loss: Tensor) -> Tensor:
        """``origin_loss + scale * sum |gamma|`` (:func:`purecompress.slim_penalty`)."""
        weights = {name: w.weight for name, w in self.get_modules_wrapper().items()}
        return origin_loss + slim_penalty(weights, list(weights), self._scale)

    def reset_tools(self) -> None:
        """Train ``training_epochs`` with the penalty; ``|gamma|``; per-layer or global allocation."""
        self._bind_evaluator()
        self._collect_trained_weights(self.loss_patch, self.training_epochs)
        self.metrics_calculator = self.metrics_calculator or NormMetricsCalculator()
        if self.sparsity_allocator is None:
            self.sparsity_allocator = NormalSparsityAllocator(self) if self.mode == "normal" else \
                GlobalSparsityAllocator(self)


class _ActivationPruner(_TrainingPruner):
    """Shared set-up of the activation pruners (abstract: leaves pick the statistic)."""

    new_api = ("evaluator", "training_steps", "activation", "mode", "dummy_input")
    old_api = ("trainer", "traced_optimizer", "criterion", "training_batches", "activation", "mode", "dummy_input")
    defaults = {"activation": "relu", "mode": "normal", "dummy_input": None}
    supported_op_types = _CHANNEL_TYPES
    config_forms = (NORMAL, EXCLUDE, INTERNAL)

    def __init__(self, model: nn.Module | None, config_list: list[dict] | None, *args: Any, **kwargs: Any) -> None:
        parsed = self._init_training(model, args, kwargs)
        self.training_steps: int = parsed.get("training_steps", parsed.get("training_batches"))
        if parsed["activation"] not in ("relu", "gelu", "relu6"):
            raise ValueError(f"{type(self).__name__}: unsupported activation {parsed['activation']!r}; "
                             "use 'relu', 'gelu' or 'relu6'")
        self.activation = parsed["activation"]
        activation_fn(self.activation)
        self.mode = _check_mode(type(self).__name__, parsed["mode"], ("normal", "dependency_aware"))
        self.dummy_input = parsed["dummy_input"]
        super().__init__(model, config_list)

    def _collector(self, module: nn.Module) -> Callable[[list], Callable]:
        dim = channel_dim_of(module)

        def factory(buffer: list) -> Callable:
            def hook(_module: nn.Module, _inputs: Any, output: Tensor) -> None:
                # NNI quirk (parity): samples, not batches, are compared with training_steps.
                if buffer and buffer[0].samples >= self.training_steps:
                    return
                new = batch_activation_stats(output, dim, self.activation)
                buffer[:] = [buffer[0] + new] if buffer else [new]
            return hook

        return factory

    def _metrics(self) -> MetricsCalculator:
        raise NotImplementedError

    def reset_tools(self) -> None:
        """Forward hooks during ``training_steps`` samples; per-channel statistic; allocator by mode."""
        scalers = _channel_scaler()
        if self.sparsity_allocator is None:
            self.sparsity_allocator = NormalSparsityAllocator(self, scalers) if self.mode == "normal" else \
                self._dependency_allocator(self.dummy_input, scalers)
        self._bind_evaluator()
        hooks = {name: {"weight": ForwardHook(w, name, self._collector(w.module))}
                 for name, w in self.get_modules_wrapper().items()}
        self._collect_hooks(hooks, self.training_steps)
        self.metrics_calculator = self.metrics_calculator or self._metrics()


class ActivationAPoZRankPruner(_ActivationPruner):
    """Prunes the output channels whose activations are most often zero (APoZ, Hu et al. 2016).

    ``(model, config_list, evaluator, training_steps, activation='relu', mode='normal',
    dummy_input=None)`` or the old ``(model, config_list, trainer, traced_optimizer, criterion,
    training_batches, activation='relu', mode='normal', dummy_input=None)``. ``mode``: 'normal'
    or 'dependency_aware' (needs ``dummy_input``). Counts samples toward ``training_steps`` (NNI).
    """

    def _metrics(self) -> MetricsCalculator:
        return APoZRankMetricsCalculator(_channel_scaler())


class ActivationMeanRankPruner(_ActivationPruner):
    """Prunes the output channels with the smallest mean activation (arguments as APoZ)."""

    def _metrics(self) -> MetricsCalculator:
        return MeanRankMetricsCalculator(_channel_scaler())


class TaylorFOWeightPruner(_TrainingPruner):
    """Prunes the output channels with the smallest ``sum over steps of (w * grad)**2`` (Molchanov 2019).

    ``(model, config_list, evaluator, training_steps, mode='normal', dummy_input=None)`` or the
    old ``(model, config_list, trainer, traced_optimizer, criterion, training_batches, mode,
    dummy_input)``. ``mode``: 'normal', 'global' (``total_sparsity`` configs) or
    'dependency_aware' (needs ``dummy_input``). Counts gradient steps.
    """

    new_api = ("evaluator", "training_steps", "mode", "dummy_input")
    old_api = ("trainer", "traced_optimizer", "criterion", "training_batches", "mode", "dummy_input")
    defaults = {"mode": "normal", "dummy_input": None}
    supported_op_types = _CHANNEL_TYPES

    def __init__(self, model: nn.Module | None, config_list: list[dict] | None, *args: Any, **kwargs: Any) -> None:
        parsed = self._init_training(model, args, kwargs)
        self.training_steps: int = parsed.get("training_steps", parsed.get("training_batches"))
        self.mode = _check_mode("TaylorFOWeightPruner", parsed["mode"], ("normal", "global", "dependency_aware"))
        self.dummy_input = parsed["dummy_input"]
        self.config_forms = (EXCLUDE, INTERNAL, GLOBAL if self.mode == "global" else NORMAL)
        super().__init__(model, config_list)

    def _collector(self, weight: Tensor) -> Callable[[list], Callable]:
        def factory(buffer: list) -> Callable:
            def hook(grad: Tensor) -> None:
                if buffer and buffer[0].steps >= self.training_steps:
                    return
                term = taylor_term(weight, grad)
                buffer[:] = [TaylorStats(buffer[0].score + term, buffer[0].steps + 1) if buffer
                             else TaylorStats(term, 1)]
            return hook

        return factory

    def reset_tools(self) -> None:
        """Gradient hooks during ``training_steps`` steps; L1 per channel; allocator by mode."""
        scalers = _channel_scaler()
        if self.sparsity_allocator is None:
            self.sparsity_allocator = {
                "normal": lambda: NormalSparsityAllocator(self, scalers),
                "global": lambda: GlobalSparsityAllocator(self, scalers),
                "dependency_aware": lambda: self._dependency_allocator(self.dummy_input, scalers),
            }[self.mode]()
        self._bind_evaluator()
        hooks = {name: {"weight": TensorHook(w.weight, name, self._collector(w.weight))}
                 for name, w in self.get_modules_wrapper().items()}
        self._collect_hooks(hooks, self.training_steps)
        self.metrics_calculator = self.metrics_calculator or HookDataNormMetricsCalculator(p=1, scalers=scalers)

"""NNI's ``pruning.tools`` for the training-aware pruners: collectors, calculators, dependency-aware allocation.

The collectors train through an :class:`~purecompress.compat.evaluator.Evaluator` with patches
and hooks; the metrics calculators turn the hooks' records (:mod:`purecompress.collect`) into
per-channel metrics; :class:`DependencyAwareAllocator` shares channel masks between dependent
layers with :func:`purecompress.allocate_dependency_aware`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import Tensor

from purecompress.allocate_dependency import allocate_dependency_aware
from purecompress.compat.base import NniMasks, Pruner
from purecompress.compat.data_collector import DataCollector
from purecompress.compat.evaluator import Evaluator, Hook
from purecompress.compat.metrics_calculator import MetricsCalculator, NormMetricsCalculator
from purecompress.compat.scaling import Scaling, _channel_scaler
from purecompress.compat.sparsity_allocator import Scalers, SparsityAllocator
from purecompress.distributed import Sync, all_reduce_stats, resolve_sync
from purecompress.stats import ActivationStats, TaylorStats

__all__ = [
    "APoZRankMetricsCalculator",
    "DependencyAwareAllocator",
    "EvaluatorBasedHookDataCollector",
    "EvaluatorBasedTargetDataCollector",
    "HookDataNormMetricsCalculator",
    "MeanRankMetricsCalculator",
]

class _EvaluatorCollector(DataCollector):
    """Trains through an evaluator with patches and hooks (abstract: leaves say what to return)."""

    def __init__(self, compressor: Pruner, evaluator: Evaluator,
                 before_opt_step_tasks: Sequence[Callable] | None = None,
                 after_opt_step_tasks: Sequence[Callable] | None = None,
                 loss_patch: Callable[[Tensor], Tensor] | None = None,
                 hooks: Mapping[str, Mapping[str, Hook]] | None = None,
                 max_steps: int | None = None, max_epochs: int | None = None) -> None:
        super().__init__(compressor)
        self.evaluator = evaluator
        self.max_steps, self.max_epochs = max_steps, max_epochs
        self._hooks: Mapping[str, Mapping[str, Hook]] = {}
        self.reset(before_opt_step_tasks, after_opt_step_tasks, loss_patch, hooks)

    def reset(self, before_opt_step_tasks: Sequence[Callable] | None = None,
              after_opt_step_tasks: Sequence[Callable] | None = None,
              loss_patch: Callable[[Tensor], Tensor] | None = None,
              hooks: Mapping[str, Mapping[str, Hook]] | None = None) -> None:
        """Patch the evaluator's optimizer step and loss, register the hooks (NNI's ``reset``)."""
        if before_opt_step_tasks or after_opt_step_tasks:
            self.evaluator.patch_optimizer_step(list(before_opt_step_tasks or []), list(after_opt_step_tasks or []))
        if loss_patch is not None:
            self.evaluator.patch_loss(loss_patch)
        if hooks:
            self._hooks = hooks
            self.evaluator.register_hooks([h for targets in hooks.values() for h in targets.values()])


class EvaluatorBasedTargetDataCollector(_EvaluatorCollector):
    """Trains, then returns the wrapped weights ``{module: {'weight': tensor}}`` (copies)."""

    def collect(self) -> dict[str, dict[str, Tensor]]:
        self.evaluator.train(max_steps=self.max_steps, max_epochs=self.max_epochs)
        return {name: {"weight": w.weight.detach().clone()}
                for name, w in self.compressor.get_modules_wrapper().items()}


class EvaluatorBasedHookDataCollector(_EvaluatorCollector):
    """Trains, then returns what each hook gathered ``{module: {target: record}}``.

    Under ``torch.distributed`` the records the core knows (``ActivationStats``, ``TaylorStats``)
    are summed over the ranks before they are returned (:func:`purecompress.all_reduce_stats`), so
    metrics and masks are the same on every rank. ``sync`` (attribute): ``'auto'`` (default: when a
    process group is initialised), True, False (rank-local, as NNI) or a ``ProcessGroup``.
    """

    sync: Sync = "auto"

    def collect(self) -> dict[str, dict[str, Any]]:
        self.evaluator.train(max_steps=self.max_steps, max_epochs=self.max_epochs)
        out = {m: {t: hook.buffer[0] for t, hook in targets.items() if hook.buffer}
               for m, targets in self._hooks.items()}
        reduce, group = resolve_sync(self.sync)
        if reduce:  # every rank reduces before any rank may raise below, so none is left waiting
            summable = {m: {t: v for t, v in d.items() if isinstance(v, (ActivationStats, TaylorStats))}
                        for m, d in out.items()}
            for m, d in all_reduce_stats(summable, group=group).items():
                out[m].update(d)
        for module_name, targets in self._hooks.items():
            if set(targets) - set(out[module_name]):
                raise RuntimeError(f"the hook on {module_name!r} saw no data during training: does the training "
                                   "function run the model and respect max_steps/max_epochs?")
        return {m: d for m, d in out.items() if d}


def _per_channel(value: Any, stat: Callable[[ActivationStats], Tensor]) -> Tensor:
    if isinstance(value, ActivationStats):
        return stat(value)
    raise TypeError(f"expected ActivationStats from an activation hook, got {type(value).__name__}")


class APoZRankMetricsCalculator(MetricsCalculator):
    """``1 - APoZ`` per output channel from activation statistics (:func:`purecompress.apoz`)."""

    def calculate_metrics(self, data: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Tensor]]:
        return {m: {t: (1 - _per_channel(v, ActivationStats.zero_fraction)).float() for t, v in targets.items()}
                for m, targets in data.items()}


class MeanRankMetricsCalculator(MetricsCalculator):
    """Mean activation per output channel (:func:`purecompress.mean_activation`)."""

    def calculate_metrics(self, data: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Tensor]]:
        return {m: {t: _per_channel(v, ActivationStats.mean).float() for t, v in targets.items()}
                for m, targets in data.items()}


class HookDataNormMetricsCalculator(NormMetricsCalculator):
    """The norm of accumulated hook data (Taylor: L1 of ``sum (w*g)**2`` per block)."""

    def calculate_metrics(self, data: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Tensor]]:
        tensors = {m: {t: v.score if isinstance(v, TaylorStats) else v[1] for t, v in targets.items()}
                   for m, targets in data.items()}
        return super().calculate_metrics(tensors)


class DependencyAwareAllocator(SparsityAllocator):
    """Channel masks shared by dependent layers (:func:`purecompress.allocate_dependency_aware`).

    The dependency sets come from :mod:`purecompress.graph` (``torch.fx``) on the unwrapped model
    with ``dummy_input``, or are given by hand.

    Args:
        pruner: the pruner.
        dummy_input: example input (required unless both dependencies are given).
        scalers: metric granularity (default: output channel).
        channel_dependency: sets of module names, instead of analysing the graph.
        group_dependency: ``{module: groups}``, instead of analysing the graph.
    """

    def __init__(self, pruner: Pruner, dummy_input: Any, scalers: Scalers | Scaling | None = None,
                 channel_dependency: Sequence[Sequence[str]] | None = None,
                 group_dependency: Mapping[str, int] | None = None) -> None:
        super().__init__(pruner, scalers or _channel_scaler())
        if channel_dependency is None or group_dependency is None:
            if dummy_input is None:
                raise ValueError("mode='dependency_aware' needs dummy_input (an example input of the model, e.g. "
                                 "torch.rand(1, 3, 224, 224)) to find the layers whose channels must agree")
            from purecompress.graph import GraphCaptureError, capture
            from purecompress.graph import channel_dependency as channels
            from purecompress.graph import group_dependency as groups

            pruner._unwrap_model()
            try:
                graph = capture(pruner._bound(), dummy_input)
                channel_dependency = channels(graph) if channel_dependency is None else channel_dependency
                group_dependency = groups(graph) if group_dependency is None else group_dependency
            except GraphCaptureError as err:
                raise GraphCaptureError(
                    f"{err} In purecompress.compat, give the dependencies by hand: build the pruner with "
                    "mode='normal', then set pruner.sparsity_allocator = DependencyAwareAllocator(pruner, None, "
                    "channel_dependency=[('conv1', 'conv2'), ...], group_dependency={'conv1': 1, ...}).",
                    module=err.module, op=err.op) from err
            finally:
                pruner._wrap_model()
        self.channel_dependency = [tuple(s) for s in channel_dependency]
        self.group_dependency = dict(group_dependency)

    def common_target_masks_generation(self, metrics: Mapping[str, Mapping[str, Tensor]]) -> NniMasks:
        core = self.core_metrics(metrics)
        names = list(core)
        masks = allocate_dependency_aware(core, self.sparsity_of(names), channel_sets=self.channel_dependency,
                                          groups=self.group_dependency, prior=self.prior_masks(names))
        return self.to_nni(masks)


"""NNI 2.10's pruning tools: the ``DataCollector -> MetricsCalculator -> SparsityAllocator``
pipeline that every basic pruner runs, with NNI's :class:`Scaling` granularity.

Each class adapts names and call order only: collectors return the core's statistics records,
calculators call the core metrics (:func:`~purecompress.lp_norm`, :func:`~purecompress.fpgm`, ...),
allocators call the core allocators (:func:`~purecompress.allocate_per_layer`,
:func:`~purecompress.allocate_global`, ...), and :class:`Scaling` is a :class:`~purecompress.Block`.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from purecompress.compat.evaluator import (
    BackwardHook,
    Evaluator,
    ForwardHook,
    Hook,
    LegacyEvaluator,
    OptimizerRecipe,
    TensorHook,
)
from purecompress.compat.pruning.base import NniMasks, Pruner, Target, sparsities
from purecompress.pruning import (
    ActivationStats,
    Block,
    Masks,
    Metric,
    Metrics,
    Sync,
    TaylorStats,
    all_reduce_stats,
    allocate_balanced,
    allocate_dependency_aware,
    allocate_global,
    allocate_per_layer,
    allocate_threshold,
    bias_masks,
    expand_blocks,
    fpgm,
    lp_norm,
    masks_to_nni,
    metric_by,
    resolve_sync,
)

__all__ = [
    "APoZRankMetricsCalculator",
    "BankSparsityAllocator",
    "DataCollector",
    "DependencyAwareAllocator",
    "DistMetricsCalculator",
    "EvaluatorBasedDataCollector",
    "EvaluatorBasedHookDataCollector",
    "EvaluatorBasedTargetDataCollector",
    "GlobalSparsityAllocator",
    "HookCollectorInfo",
    "HookDataNormMetricsCalculator",
    "MeanRankMetricsCalculator",
    "MetricsCalculator",
    "NormMetricsCalculator",
    "NormalSparsityAllocator",
    "Scalers",
    "Scaling",
    "SingleHookTrainerBasedDataCollector",
    "SparsityAllocator",
    "StraightMetricsCalculator",
    "Target",
    "TargetDataCollector",
    "ThresholdSparsityAllocator",
    "TrainerBasedDataCollector",
    "WeightDataCollector",
    "WeightTrainerBasedDataCollector",
    "get_scaler",
    "normalize_scalers",
]



class Scaling:
    """A scaling kernel (block size per dim, ``-1`` = the whole dim, squeezed after shrinking).

    Args:
        kernel_size: block size per dim; shorter than a tensor's rank, it is padded.
        kernel_padding_mode: ``'front'`` pads the kernel on the left with 1, ``'back'`` pads it on
            the right with -1 (``Scaling([1], 'back')`` = one value per output channel).

    >>> Scaling([2, 3]).shrink(torch.arange(24.).view(4, 6))
    tensor([[ 4.,  7.],
            [16., 19.]])
    >>> Scaling([1], 'back').shrink(torch.ones(3, 3, 3), lambda t: t.sum(-1))
    tensor([9., 9., 9.])
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



def channel_scaler() -> Scaling:
    """One value per output channel (``Scaling([1], 'back')``), the scaling of NNI's channel pruners."""
    return Scaling([1], kernel_padding_mode="back")



class DataCollector(abc.ABC):
    """Abstract collector bound to a pruner (NNI calls it the compressor).

    Args:
        compressor: the pruner.
    """

    def __init__(self, compressor: Pruner) -> None:
        self.compressor = compressor

    @abc.abstractmethod
    def reset(self) -> None:
        """Forget collected state."""

    @abc.abstractmethod
    def collect(self) -> dict[str, dict[str, Any]]:
        """``{module: {target: data}}`` (tensors, statistics records or hook buffers)."""



class TargetDataCollector(DataCollector):
    """The wrapped weights: ``{module: {'weight': tensor}}``.

    The tensors are detached views of the Parameters (NNI clones): the core never writes to its
    inputs, so no copy is needed.
    """

    def reset(self) -> None:
        """Nothing to forget."""

    def collect(self) -> dict[str, dict[str, Tensor]]:
        return {name: {"weight": wrapper.weight.detach()}
                for name, wrapper in self.compressor.get_modules_wrapper().items()}


class WeightDataCollector(TargetDataCollector):
    """NNI's old name of :class:`TargetDataCollector` (kept by NNI 2.10 until 3.0); the same collector."""



class HookCollectorInfo:
    """Which hooks NNI's old trainer-based collectors place, and where.

    Args:
        targets: ``{name: tensor}`` for ``'tensor'`` hooks; layers (with ``.name`` and ``.module``,
            e.g. ``LayerInfo``) for ``'forward'`` / ``'backward'`` hooks.
        hook_type: ``'forward'``, ``'backward'`` or ``'tensor'``.
        collector: ``buffer -> hook`` (module hooks) or ``(buffer, tensor) -> hook`` (tensor hooks);
            the hook fills ``buffer``, an empty list per target.
    """

    def __init__(self, targets: Mapping[str, Tensor] | Sequence[Any], hook_type: str,
                 collector: Callable[..., Callable]) -> None:
        if hook_type not in ("forward", "backward", "tensor"):
            raise ValueError(f"hook_type must be 'forward', 'backward' or 'tensor', got {hook_type!r}")
        if hook_type == "tensor" and not (isinstance(targets, Mapping)
                                          and all(isinstance(t, Tensor) for t in targets.values())):
            raise TypeError("'tensor' hooks need targets {name: tensor}")
        if hook_type != "tensor" and not all(hasattr(t, "name") and isinstance(getattr(t, "module", None), nn.Module)
                                             for t in targets):
            raise TypeError(f"{hook_type!r} hooks need a list of layers with .name and .module (LayerInfo)")
        self.targets = targets
        self.hook_type = hook_type
        self.collector = collector

    def hooks(self) -> dict[str, Hook]:
        """One evaluator :class:`~purecompress.compat.evaluator.Hook` per target, keyed by its name."""
        if self.hook_type == "tensor":
            collector = self.collector
            return {name: TensorHook(t, name, lambda buffer, t=t: collector(buffer, t))  # type: ignore[misc]
                    for name, t in self.targets.items()}  # type: ignore[union-attr]
        kind = ForwardHook if self.hook_type == "forward" else BackwardHook
        return {layer.name: kind(layer.module, layer.name, self.collector) for layer in self.targets}



class TrainerBasedDataCollector(DataCollector):
    """NNI's old trainer-based collection: ``trainer(model, optimizer, criterion)`` called
    ``training_epochs`` times, with tasks around each optimizer step and hooks (abstract: leaves
    say what to return).

    It runs through a :class:`~purecompress.compat.evaluator.LegacyEvaluator`: the optimizer is
    rebuilt from ``optimizer_helper`` for the wrapped model at every :meth:`reset`.

    Args:
        compressor: the pruner (its model wrapped).
        trainer: ``trainer(model, optimizer, criterion)``.
        optimizer_helper: an :class:`~purecompress.compat.evaluator.OptimizerConstructHelper`.
        criterion: ``criterion(output, target) -> loss``.
        training_epochs: how many times the trainer is called per :meth:`collect`.
        opt_before_tasks, opt_after_tasks: called before / after each ``optimizer.step()``.
        collector_infos: the hooks to place (:class:`HookCollectorInfo`).
        criterion_patch: ``criterion -> new criterion``.
    """

    def __init__(self, compressor: Pruner, trainer: Callable[[nn.Module, Optimizer, Callable], Any],
                 optimizer_helper: OptimizerRecipe, criterion: Callable[..., Tensor], training_epochs: int,
                 opt_before_tasks: Sequence[Callable] = (), opt_after_tasks: Sequence[Callable] = (),
                 collector_infos: Sequence[HookCollectorInfo] = (),
                 criterion_patch: Callable[[Callable], Callable] | None = None) -> None:
        super().__init__(compressor)
        if not isinstance(training_epochs, int) or training_epochs < 0:
            raise ValueError(f"training_epochs must be an int >= 0, got {training_epochs!r}")
        self.trainer, self.optimizer_helper, self.training_epochs = trainer, optimizer_helper, training_epochs
        self._origin_criterion, self._criterion_patch = criterion, criterion_patch
        self._opt_before_tasks, self._opt_after_tasks = list(opt_before_tasks), list(opt_after_tasks)
        self.evaluator: LegacyEvaluator | None = None
        self._hooks: list[dict[str, Hook]] = []
        self.reset(collector_infos)

    def reset(self, collector_infos: Sequence[HookCollectorInfo] = ()) -> None:
        """Rebuild the optimizer for the wrapped model, patch its step and the criterion, replace the hooks."""
        if self.evaluator is not None:
            self.evaluator.unbind_model()
        model = self.compressor.bound_model
        if model is None:
            raise RuntimeError("the pruner has no model bound; call its reset(model, config_list) first")
        criterion = self._origin_criterion if self._criterion_patch is None else \
            self._criterion_patch(self._origin_criterion)
        evaluator = LegacyEvaluator(self.trainer, self.optimizer_helper, criterion)
        evaluator._init_optimizer_helpers(model)
        evaluator.bind_model(model, self.compressor.get_origin2wrapped_parameter_name_map())
        if self._opt_before_tasks or self._opt_after_tasks:
            evaluator.patch_optimizer_step(self._opt_before_tasks, self._opt_after_tasks)
        self._hooks = [info.hooks() for info in collector_infos]
        evaluator.register_hooks([h for hooks in self._hooks for h in hooks.values()])
        self.evaluator = evaluator

    def _train(self) -> None:
        if self.evaluator is None:
            raise RuntimeError("call reset() first")
        if self.training_epochs:
            self.evaluator.train(max_epochs=self.training_epochs)



class WeightTrainerBasedDataCollector(TrainerBasedDataCollector):
    """Trains (old API), then returns copies of the wrapped weights ``{module: {'weight': tensor}}``."""

    def collect(self) -> dict[str, dict[str, Tensor]]:
        self._train()
        return {name: {"weight": w.weight.detach().clone()}
                for name, w in self.compressor.get_modules_wrapper().items()}



class SingleHookTrainerBasedDataCollector(TrainerBasedDataCollector):
    """Trains (old API), then returns each hook's buffer ``{module: {'weight': buffer}}`` (one hook per module)."""

    def collect(self) -> dict[str, dict[str, list]]:
        self._train()
        return {name: {"weight": hook.buffer} for hooks in self._hooks for name, hook in hooks.items()}


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


Scalers = Mapping[str, Mapping[str, Scaling]]


NniMetrics = Mapping[str, Mapping[str, Tensor]]



def normalize_scalers(scalers: Scalers | Scaling | None) -> Scalers | None:
    """NNI's rule: one :class:`Scaling` means ``{'_default': {'_default': scaling}}``."""
    return {"_default": {"_default": scalers}} if isinstance(scalers, Scaling) else scalers



def get_scaler(scalers: Scalers | None, module_name: str, target_name: str) -> Scaling | None:
    """Look up ``scalers[module][target]``, then ``[module]['_default']``, ``['_default'][target]``,
    ``['_default']['_default']``; None when none is given."""
    if not scalers:
        return None
    default = scalers.get("_default", {})
    fallback = default.get(target_name, default.get("_default"))
    module = scalers.get(module_name, {})
    return module.get(target_name, module.get("_default", fallback))



class SparsityAllocator(abc.ABC):
    """Abstract allocator: :meth:`allocate` makes core masks from NNI metrics and the targets' sparsities.

    Args:
        pruner: the pruner whose wrappers receive the masks (read only by NNI's
            :meth:`generate_sparsity`, never by :meth:`allocate`).
        scalers: the block granularity of the metrics (None: one metric value per element).
        continuous_mask: already-pruned blocks stay pruned.
    """

    def __init__(self, pruner: Pruner, scalers: Scalers | Scaling | None = None, continuous_mask: bool = True) -> None:
        self.pruner = pruner
        self.scalers = normalize_scalers(scalers)
        self.continuous_mask = continuous_mask

    def _get_scaler(self, module_name: str, target_name: str) -> Scaling | None:
        return get_scaler(self.scalers, module_name, target_name)

    def core_metrics(self, metrics: NniMetrics, targets: Mapping[str, Target]) -> Metrics:
        """NNI metrics as core records keyed ``'module.target'`` (grid from this allocator's scalers)."""
        out = {}
        for module_name, by_target in metrics.items():
            for target, metric in by_target.items():
                name = f"{module_name}.{target}"
                if name not in targets:
                    raise KeyError(f"metric for {name!r}, which is not a target of this allocation")
                shape = targets[name].shape
                scaler = self._get_scaler(module_name, target)
                grid = scaler.grid(shape) if scaler is not None else shape
                if metric.numel() != math.prod(grid):
                    raise ValueError(f"{module_name}.{target}: metric of shape {tuple(metric.shape)} does not fit "
                                     f"a target of shape {shape} with scaler {scaler}")
                out[name] = Metric(metric.detach().reshape(grid), shape)
        return out

    @abc.abstractmethod
    def allocate_weights(self, metrics: Metrics, targets: Mapping[str, Target], prior: Masks | None) -> Masks:
        """Weight masks for ``metrics`` (``targets`` holds each one's sparsity; ``prior``: continuous masking)."""

    def allocate(self, metrics: NniMetrics, targets: Mapping[str, Target], *, prior: Masks | None = None) -> Masks:
        """Core masks for the weights in ``metrics`` and NNI's bias masks (:func:`purecompress.bias_masks`).

        Args:
            metrics: NNI's ``{module: {'weight': metric}}``.
            targets: ``'module.weight'`` -> :class:`Target` (shape, sparsity, cap, bias shape).
            prior: the masks already applied; used only with ``continuous_mask``.
        """
        core = self.core_metrics(metrics, targets)
        if not core:
            return {}
        masks = self.allocate_weights(core, {n: targets[n] for n in core}, prior if self.continuous_mask else None)
        shapes = {n[: -len("weight")] + "bias": targets[n].bias for n in masks
                  if n.endswith("weight") and targets[n].bias is not None}
        return bias_masks(masks, shapes)  # type: ignore[arg-type]

    def generate_sparsity(self, metrics: NniMetrics) -> NniMasks:
        """NNI's entry point: the pruner's current targets and masks, then :meth:`allocate`, as dense masks."""
        return masks_to_nni(self.allocate(metrics, self.pruner.targets(), prior=self.pruner.weight_masks()))



class NormalSparsityAllocator(SparsityAllocator):
    """Each layer prunes its ``total_sparsity`` lowest-metric blocks (:func:`purecompress.allocate_per_layer`)."""

    def allocate_weights(self, metrics: Metrics, targets: Mapping[str, Target], prior: Masks | None) -> Masks:
        return allocate_per_layer(metrics, sparsities(targets), prior=prior)



class BankSparsityAllocator(SparsityAllocator):
    """Every bank of shape ``balance_gran`` prunes the layer's sparsity (:func:`purecompress.allocate_balanced`).

    Args:
        pruner: the pruner.
        balance_gran: bank shape, right-aligned to the metric's dims (e.g. ``[5]``).
    """

    def __init__(self, pruner: Pruner, balance_gran: Sequence[int]) -> None:
        if any(not isinstance(g, int) or g <= 0 for g in balance_gran):
            raise ValueError(f"All values in balance_gran should be positive ints, got {list(balance_gran)}")
        super().__init__(pruner)
        self.balance_gran = list(balance_gran)

    def allocate_weights(self, metrics: Metrics, targets: Mapping[str, Target], prior: Masks | None) -> Masks:
        return allocate_balanced(metrics, sparsities(targets), gran=self.balance_gran, prior=prior)



class GlobalSparsityAllocator(SparsityAllocator):
    """All metrics pooled, one ``total_sparsity``, per-layer cap ``max_sparsity_per_layer`` (default 0.99).

    Uses :func:`purecompress.allocate_global`. Unlike NNI 2.10, already-pruned blocks count toward
    the total first (NNI gives them ``min - 1`` per layer, which can prune more than asked).
    """

    def allocate_weights(self, metrics: Metrics, targets: Mapping[str, Target], prior: Masks | None) -> Masks:
        sparsity = sparsities(targets)
        if len(set(sparsity.values())) > 1:
            raise ValueError(f"GlobalSparsityAllocator needs one total_sparsity for all its layers, got {sparsity}")
        caps = {name: target.cap for name, target in targets.items()}
        return allocate_global(metrics, next(iter(sparsity.values())), max_sparsity=caps, prior=prior)



class ThresholdSparsityAllocator(SparsityAllocator):
    """Keeps blocks whose ``sigmoid(metric)`` exceeds ``total_sparsity`` (NNI's experimental allocator;
    :func:`purecompress.allocate_threshold` with ``squash='sigmoid'``)."""

    def allocate_weights(self, metrics: Metrics, targets: Mapping[str, Target], prior: Masks | None) -> Masks:
        return allocate_threshold(metrics, sparsities(targets), squash="sigmoid", prior=prior)


class EvaluatorBasedDataCollector(DataCollector):
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



class EvaluatorBasedTargetDataCollector(EvaluatorBasedDataCollector):
    """Trains, then returns the wrapped weights ``{module: {'weight': tensor}}`` (copies)."""

    def collect(self) -> dict[str, dict[str, Tensor]]:
        self.evaluator.train(max_steps=self.max_steps, max_epochs=self.max_epochs)
        return {name: {"weight": w.weight.detach().clone()}
                for name, w in self.compressor.get_modules_wrapper().items()}



class EvaluatorBasedHookDataCollector(EvaluatorBasedDataCollector):
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



def _hook_mean(module_name: str, target: str, value: Any) -> Tensor:
    """NNI's hook data ``[count, accumulated]`` (what its activation collectors gather) -> ``accumulated / count``."""
    if isinstance(value, (list, tuple)) and len(value) == 2 and isinstance(value[1], Tensor):
        return value[1] / value[0]
    raise TypeError(f"{module_name}.{target}: expected ActivationStats or NNI's hook data [count, accumulated "
                    f"tensor], got {type(value).__name__}")



class _ActivationMetricsCalculator(MetricsCalculator):
    """Metrics of activation data: the core's :class:`~purecompress.ActivationStats` (one value per
    output channel), or NNI's hook data ``[count, accumulated]``, reduced per block of the scalers
    (abstract: leaves say how)."""

    @staticmethod
    @abc.abstractmethod
    def from_stats(stats: ActivationStats) -> Tensor:
        """``[C]`` metric of a layer's statistics."""

    @staticmethod
    @abc.abstractmethod
    def reduce(blocks: Tensor) -> Tensor:
        """Metric of each block of ``accumulated / count`` (reduces the last dim)."""

    def calculate_metrics(self, data: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Tensor]]:
        out: dict[str, dict[str, Tensor]] = {}
        for module_name, targets in data.items():
            out[module_name] = {}
            for target, value in targets.items():
                if isinstance(value, ActivationStats):
                    out[module_name][target] = self.from_stats(value).float()
                    continue
                mean = {module_name: {target: _hook_mean(module_name, target, value)}}
                metric = self._each(mean, lambda p, t, s: metric_by(p, t, self.reduce, block=s.block))
                out[module_name][target] = metric[module_name][target]
        return out



class APoZRankMetricsCalculator(_ActivationMetricsCalculator):
    """``1 - APoZ``: per output channel from activation statistics (:func:`purecompress.apoz`), or
    ``1 - mean`` of each block of NNI's hook data (zero counts accumulated over ``count`` samples).

    >>> calc = APoZRankMetricsCalculator(Scaling([-1, 1], 'back'))
    >>> calc.calculate_metrics({'fc': {'weight': [2, torch.tensor([[0., 0., 1.], [0., 0., 0.]])]}})
    {'fc': {'weight': tensor([1.0000, 1.0000, 0.7500])}}
    """

    @staticmethod
    def from_stats(stats: ActivationStats) -> Tensor:
        return 1 - stats.zero_fraction()

    @staticmethod
    def reduce(blocks: Tensor) -> Tensor:
        return 1 - blocks.mean(-1)



class MeanRankMetricsCalculator(_ActivationMetricsCalculator):
    """Mean activation: per output channel from activation statistics (:func:`purecompress.mean_activation`),
    or the mean of each block of NNI's hook data (activations accumulated over ``count`` samples).

    >>> calc = MeanRankMetricsCalculator(Scaling([-1, 1], 'back'))
    >>> calc.calculate_metrics({'fc': {'weight': [2, torch.tensor([[0., 0., 1.], [0., 0., 0.]])]}})
    {'fc': {'weight': tensor([0.0000, 0.0000, 0.2500])}}
    """

    @staticmethod
    def from_stats(stats: ActivationStats) -> Tensor:
        return stats.mean()

    @staticmethod
    def reduce(blocks: Tensor) -> Tensor:
        return blocks.mean(-1)



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
        super().__init__(pruner, scalers or channel_scaler())
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
                # NNI's rule for parity: depthwise convs choose their channels apart from their producers
                channel_dependency = (channels(graph, couple_depthwise=False) if channel_dependency is None
                                      else channel_dependency)
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

    def allocate_weights(self, metrics: Metrics, targets: Mapping[str, Target], prior: Masks | None) -> Masks:
        return allocate_dependency_aware(metrics, sparsities(targets), channel_sets=self.channel_dependency,
                                         groups=self.group_dependency, prior=prior)

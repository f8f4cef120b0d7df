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
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from purecompress.allocate_dependency import allocate_dependency_aware
from purecompress.collect import (
    ActivationStats,
    TaylorStats,
    activation_fn,
    batch_activation_stats,
    channel_dim_of,
    taylor_term,
)
from purecompress.compat._schema import EXCLUDE, GLOBAL, INTERNAL, NORMAL
from purecompress.compat.base import NniMasks, Pruner
from purecompress.compat.data_collector import DataCollector
from purecompress.compat.evaluator import Evaluator, ForwardHook, Hook, LegacyEvaluator, TensorHook
from purecompress.compat.metrics_calculator import MetricsCalculator, NormMetricsCalculator, StraightMetricsCalculator
from purecompress.compat.pruning import BasicPruner
from purecompress.compat.scaling import Scaling
from purecompress.compat.sparsity_allocator import (
    GlobalSparsityAllocator,
    NormalSparsityAllocator,
    Scalers,
    SparsityAllocator,
    ThresholdSparsityAllocator,
)
from purecompress.config import ConfigError, from_config_list
from purecompress.metrics_data import slim_penalty
from purecompress.movement import cubic_sparsity, movement_regularizer, straight_through
from purecompress.selection import select

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

_CHANNEL_TYPES = ("Conv2d", "Linear")


# ---------------------------------------------------------------------------------------------
# Collectors, metrics calculators, the dependency-aware allocator (NNI's ``pruning.tools`` names)


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
    """Trains, then returns what each hook gathered ``{module: {target: record}}``."""

    def collect(self) -> dict[str, dict[str, Any]]:
        self.evaluator.train(max_steps=self.max_steps, max_epochs=self.max_epochs)
        out: dict[str, dict[str, Any]] = {}
        for module_name, targets in self._hooks.items():
            for target, hook in targets.items():
                if not hook.buffer:
                    raise RuntimeError(f"the hook on {module_name!r} saw no data during training: does the training "
                                       "function run the model and respect max_steps/max_epochs?")
                out.setdefault(module_name, {})[target] = hook.buffer[0]
        return out


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
        super().__init__(pruner, scalers or Scaling([1], kernel_padding_mode="back"))
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


# ---------------------------------------------------------------------------------------------
# Argument parsing shared by every training pruner (NNI's fake overloads)


def _parse(name: str, arg_names: Sequence[str], args: tuple, kwargs: Mapping[str, Any],
           defaults: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(zip(arg_names, args))
    if len(args) > len(arg_names):
        raise TypeError(f"{name}() takes {len(arg_names)} arguments after config_list, got {len(args)}")
    for key, value in kwargs.items():
        if key in merged:
            raise TypeError(f"{name}() got multiple values for argument {key!r}")
        merged[key] = value
    unexpected = set(merged) - set(arg_names)
    if unexpected:
        raise TypeError(f"{name}() got unexpected arguments {sorted(unexpected)}; expected {list(arg_names)}")
    for key, value in defaults.items():
        if key in arg_names:
            merged.setdefault(key, value)
    missing = [k for k in arg_names if k not in merged]
    if missing:
        raise TypeError(f"{name}() missing required arguments {missing}")
    return merged


class _TrainingPruner(BasicPruner):
    """A pruner that trains through an evaluator (abstract; the leaves are NNI's pruners)."""

    evaluator: Evaluator
    using_evaluator: bool
    new_api: Sequence[str] = ()
    old_api: Sequence[str] = ()
    defaults: Mapping[str, Any] = {}

    def _init_training(self, model: nn.Module | None, args: tuple, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        name = type(self).__name__
        first = args[0] if args else kwargs.get("evaluator")
        if isinstance(first, Evaluator):
            parsed = _parse(name, self.new_api, args, kwargs, self.defaults)
            self.evaluator = parsed.pop("evaluator")
            self.using_evaluator = True
        else:
            parsed = _parse(name, self.old_api, args, kwargs, self.defaults)
            self.evaluator = LegacyEvaluator(parsed.pop("trainer"), parsed.pop("traced_optimizer"),
                                             parsed.pop("criterion"), parsed.get("dummy_input"))
            self.using_evaluator = False
        if model is not None and not self.evaluator._initialization_complete:
            self.evaluator._init_optimizer_helpers(model)
        return parsed

    def _bind_evaluator(self) -> None:
        self.evaluator.unbind_model()
        self.evaluator.bind_model(self._bound(), self.get_origin2wrapped_parameter_name_map())

    def _dependency_allocator(self, dummy_input: Any, scalers: Scaling) -> DependencyAwareAllocator:
        if dummy_input is None:
            dummy_input = self.evaluator.get_dummy_input()
        return DependencyAwareAllocator(self, dummy_input, scalers)

    def compress(self) -> tuple[nn.Module, NniMasks]:
        """Train and collect, compute metrics, allocate, load masks; then unbind the evaluator."""
        result = super().compress()
        self.evaluator.unbind_model()
        return result


def _check_mode(name: str, mode: str, allowed: Sequence[str]) -> str:
    if mode not in allowed:
        raise ValueError(f"{name}: mode must be one of {list(allowed)}, got {mode!r}")
    return mode


def _channel_scaler() -> Scaling:
    return Scaling([1], kernel_padding_mode="back")


# ---------------------------------------------------------------------------------------------
# The pruners


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
        if self.data_collector is None:
            self.data_collector = EvaluatorBasedTargetDataCollector(self, self.evaluator, loss_patch=self.loss_patch,
                                                                    max_epochs=self.training_epochs)
        else:
            self.data_collector.reset(loss_patch=self.loss_patch)  # type: ignore[call-arg]
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
        if self.data_collector is None:
            self.data_collector = EvaluatorBasedHookDataCollector(self, self.evaluator, hooks=hooks,
                                                                  max_steps=self.training_steps)
        else:
            self.data_collector.reset(hooks=hooks)  # type: ignore[call-arg]
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
        if self.data_collector is None:
            self.data_collector = EvaluatorBasedHookDataCollector(self, self.evaluator, hooks=hooks,
                                                                  max_steps=self.training_steps)
        else:
            self.data_collector.reset(hooks=hooks)  # type: ignore[call-arg]
        self.metrics_calculator = self.metrics_calculator or HookDataNormMetricsCalculator(p=1, scalers=scalers)


def _rho_of(config_list: Sequence[Mapping[str, Any]]) -> list[float | None]:
    out: list[float | None] = []
    for index, entry in enumerate(config_list):
        rho = entry.get("rho") if isinstance(entry, Mapping) else None
        if rho is not None and (not isinstance(rho, float) or rho <= 0):
            raise ConfigError(index, "rho", f"must be a float > 0, got {rho!r}")
        out.append(rho)
    return out


class ADMMPruner(_TrainingPruner):
    """ADMM pruning: ``iterations`` rounds of training with ``rho/2 * ...`` then projecting.

    ``(model, config_list, evaluator, iterations, training_epochs, granularity='fine-grained')``
    or the old ``(model, config_list, trainer, traced_optimizer, criterion, iterations,
    training_epochs, granularity)``. Config key ``rho`` (default 1e-4). The penalty is NNI's
    ``rho/2 * sqrt(||W - Z + U||)`` (see :func:`purecompress.admm_penalty`, ``form='nni'``).
    """

    new_api = ("evaluator", "iterations", "training_epochs", "granularity")
    old_api = ("trainer", "traced_optimizer", "criterion", "iterations", "training_epochs", "granularity")
    defaults = {"granularity": "fine-grained"}
    config_forms = (NORMAL, INTERNAL, EXCLUDE)

    def __init__(self, model: nn.Module | None, config_list: list[dict] | None, *args: Any, **kwargs: Any) -> None:
        parsed = self._init_training(model, args, kwargs)
        self.iterations: int = parsed["iterations"]
        self.training_epochs: int = parsed["training_epochs"]
        self.granularity = _check_mode("ADMMPruner granularity", parsed["granularity"],
                                       ("fine-grained", "coarse-grained"))
        self.Z: dict[str, dict[str, Tensor]] = {}
        self.U: dict[str, dict[str, Tensor]] = {}
        super().__init__(model, config_list)

    def reset(self, model: nn.Module | None = None, config_list: list[dict] | None = None) -> None:
        """Bind and wrap (``rho`` is read here and stored on each wrapper's config); Z = W, U = 0."""
        rhos = _rho_of(config_list or [])
        stripped = [{k: v for k, v in e.items() if k != "rho"} for e in (config_list or [])]
        self._unwrap_model()
        plan = select(model, from_config_list(stripped), warn=False) if isinstance(model, nn.Module) else ()
        super().reset(model, stripped)
        for entry in plan:
            if rhos[entry.index] is not None:
                self.get_modules_wrapper()[entry.module].config["rho"] = rhos[entry.index]
        self.Z = {n: {"weight": w.weight.detach().clone()} for n, w in self.get_modules_wrapper().items()}
        self.U = {n: {"weight": torch.zeros_like(z["weight"])} for n, z in self.Z.items()}

    def loss_patch(self, origin_loss: Tensor) -> Tensor:
        """``origin_loss + sum rho/2 * sqrt(||W - Z + U||)`` (NNI's form)."""
        from purecompress.admm import AdmmState, admm_penalty
        from purecompress.records import Block

        wrappers = self.get_modules_wrapper()
        state = AdmmState({n: z["weight"] for n, z in self.Z.items()}, {n: u["weight"] for n, u in self.U.items()},
                          {}, {n: float(wrappers[n].config.get("rho", 1e-4)) for n in self.Z}, {}, Block.element(), 0)
        return origin_loss + admm_penalty({n: w.weight for n, w in wrappers.items()}, state, form="nni")

    def reset_tools(self) -> None:
        """Train ``training_epochs`` per iteration with the penalty; L1 metric; per-layer allocator."""
        self._bind_evaluator()
        if self.data_collector is None:
            self.data_collector = EvaluatorBasedTargetDataCollector(self, self.evaluator, loss_patch=self.loss_patch,
                                                                    max_epochs=self.training_epochs)
        else:
            self.data_collector.reset(loss_patch=self.loss_patch)  # type: ignore[call-arg]
        scalers = None if self.granularity == "fine-grained" else _channel_scaler()
        self.metrics_calculator = self.metrics_calculator or NormMetricsCalculator(p=1, scalers=scalers)
        self.sparsity_allocator = self.sparsity_allocator or NormalSparsityAllocator(self, scalers)

    def compress(self) -> tuple[nn.Module, NniMasks]:
        """ADMM iterations (Z = prune(W + U), U += W - Z), then masks from the trained W."""
        model = self._bound()
        assert self.data_collector and self.metrics_calculator and self.sparsity_allocator
        data: dict[str, dict[str, Tensor]] = {}
        for _ in range(self.iterations):
            data = self.data_collector.collect()
            z = {n: {"weight": d["weight"] + self.U[n]["weight"]} for n, d in data.items()}
            masks = self.sparsity_allocator.generate_sparsity(self.metrics_calculator.calculate_metrics(z))
            for n in z:
                self.Z[n]["weight"] = z[n]["weight"] * masks[n]["weight"]
                self.U[n]["weight"] = self.U[n]["weight"] + data[n]["weight"] - self.Z[n]["weight"]
        self.Z, self.U = {}, {}
        masks = self.sparsity_allocator.generate_sparsity(self.metrics_calculator.calculate_metrics(data))
        self.load_masks(masks)
        self.evaluator.unbind_model()
        return model, masks


class _ScoreCollector(_EvaluatorCollector):
    """Trains, then returns the movement scores ``{module: {'weight': scores}}``."""

    def collect(self) -> dict[str, dict[str, Tensor]]:
        self.evaluator.train(max_steps=self.max_steps, max_epochs=self.max_epochs)
        scores = self.compressor._scores  # type: ignore[attr-defined]
        return {name: {"weight": s.detach().clone()} for name, s in scores.items()}


class MovementPruner(_TrainingPruner):
    """Movement pruning: weight scores trained by a straight-through mask, cubic sparsity schedule.

    ``(model, config_list, evaluator, warm_up_step, cool_down_beginning_step, training_epochs=None,
    training_steps=None, regular_scale=None, movement_mode='hard', sparse_granularity='finegrained')``
    or the old ``(model, config_list, trainer, traced_optimizer, criterion, training_epochs,
    warm_up_step, cool_down_beginning_step)``. Scores are trained by Adam (lr 1e-2) after each
    step of the user's optimizer, and the masks follow :func:`purecompress.movement.cubic_sparsity`.
    ``sparse_granularity='auto'`` (Hugging Face attention heads) is not provided.
    """

    new_api = ("evaluator", "warm_up_step", "cool_down_beginning_step", "training_epochs", "training_steps",
               "regular_scale", "movement_mode", "sparse_granularity")
    old_api = ("trainer", "traced_optimizer", "criterion", "training_epochs", "warm_up_step",
               "cool_down_beginning_step")
    defaults = {"training_epochs": None, "training_steps": None, "regular_scale": None, "movement_mode": "hard",
                "sparse_granularity": "finegrained"}
    config_forms = (NORMAL, EXCLUDE, INTERNAL)

    def __init__(self, model: nn.Module | None, config_list: list[dict] | None, *args: Any, **kwargs: Any) -> None:
        parsed = self._init_training(model, args, kwargs)
        self.training_epochs: int | None = parsed["training_epochs"]
        self.warm_up_step: int = parsed["warm_up_step"]
        self.cool_down_beginning_step: int = parsed["cool_down_beginning_step"]
        if not self.warm_up_step < self.cool_down_beginning_step:
            raise ValueError(f"MovementPruner: warm_up_step ({self.warm_up_step}) must be smaller than "
                             f"cool_down_beginning_step ({self.cool_down_beginning_step})")
        self.training_steps: int | None = parsed.get("training_steps")
        self.regular_scale: float | None = parsed.get("regular_scale")
        self.movement_mode = _check_mode("MovementPruner movement_mode", parsed.get("movement_mode", "hard"),
                                         ("hard", "soft"))
        granularity = parsed.get("sparse_granularity", "finegrained")
        if granularity == "auto":
            raise NotImplementedError("MovementPruner(sparse_granularity='auto') needs NNI's Hugging Face model "
                                      "parsers and is not provided; use 'finegrained'")
        _check_mode("MovementPruner sparse_granularity", granularity, ("finegrained",))
        self._scores: dict[str, nn.Parameter] = {}
        self._handles: list[Any] = []
        self.step_counter = 0
        super().__init__(model, config_list)

    def _scale(self, step: int) -> float:
        return cubic_sparsity(step, 1.0, warm_up=self.warm_up_step, cool_down=self.cool_down_beginning_step)

    def _remove_score_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _straight_through(self, name: str) -> Callable[[nn.Module, Any], None]:
        wrapper, score = self.get_modules_wrapper()[name], self._scores[name]

        def pre_hook(module: nn.Module, _inputs: Any) -> None:
            if self.is_wrapped:  # the wrapper has just set module.weight = W * mask; make the mask's grad reach S
                module._buffers["weight"] = wrapper.weight * straight_through(score, wrapper.weight_mask)
        return pre_hook

    def _after_step(self) -> None:
        self._score_optimizer.step()
        self._score_optimizer.zero_grad()
        self.step_counter += 1
        if self.step_counter > self.warm_up_step:
            self._schedule(self.step_counter)
            data = {n: {"weight": s.detach()} for n, s in self._scores.items()}
            assert self.metrics_calculator is not None and self.sparsity_allocator is not None
            self.load_masks(self.sparsity_allocator.generate_sparsity(self.metrics_calculator.calculate_metrics(data)))

    def _schedule(self, step: int) -> None:
        wrappers = self.get_modules_wrapper()
        for config in self.config_list or []:
            for name in config["op_names"]:
                wrappers[name].config["total_sparsity"] = config["total_sparsity"] * self._scale(step)

    def loss_patch(self, origin_loss: Tensor) -> Tensor:
        """Soft mode: ``+ regular_scale * cubic(step) * mean(sigmoid(S))`` (NNI's regularizer)."""
        if self.regular_scale is None:
            return origin_loss
        return origin_loss + self._scale(self.step_counter) * movement_regularizer(self._scores, self.regular_scale)

    def reset_tools(self) -> None:
        """Scores (zeros) with straight-through hooks, Adam on them, masks after every step."""
        self._remove_score_hooks()
        wrappers = self.get_modules_wrapper()
        self._scores = {n: nn.Parameter(torch.zeros_like(w.weight.detach())) for n, w in wrappers.items()}
        self._handles = [w.module.register_forward_pre_hook(self._straight_through(n)) for n, w in wrappers.items()]
        self._score_optimizer = torch.optim.Adam(list(self._scores.values()), 1e-2)
        self.step_counter = 0
        self.metrics_calculator = self.metrics_calculator or StraightMetricsCalculator()
        if self.sparsity_allocator is None:
            allocator = ThresholdSparsityAllocator if self.movement_mode == "soft" else NormalSparsityAllocator
            self.sparsity_allocator = allocator(self, Scaling([1]), continuous_mask=False)
        self._bind_evaluator()
        loss_patch = self.loss_patch if self.using_evaluator else None
        if self.data_collector is None:
            self.data_collector = _ScoreCollector(self, self.evaluator, after_opt_step_tasks=[self._after_step],
                                                  loss_patch=loss_patch, max_epochs=self.training_epochs,
                                                  max_steps=self.training_steps)
        else:
            self.data_collector.reset(after_opt_step_tasks=[self._after_step])  # type: ignore[call-arg]

    def compress(self) -> tuple[nn.Module, NniMasks]:
        """Train from sparsity 0 with the schedule; final masks from the scores."""
        for wrapper in self.get_modules_wrapper().values():
            wrapper.config["total_sparsity"] = 0
        try:
            return super().compress()
        finally:
            self._remove_score_hooks()

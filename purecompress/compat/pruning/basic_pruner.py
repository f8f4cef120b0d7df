"""NNI 2.10's basic pruners (``nni.compression.pytorch.pruning.basic_pruner``): one-shot
(:class:`LevelPruner`, :class:`L1NormPruner`, :class:`L2NormPruner`, :class:`FPGMPruner`) and
training-aware (:class:`SlimPruner`, :class:`ActivationAPoZRankPruner`,
:class:`ActivationMeanRankPruner`, :class:`TaylorFOWeightPruner`, :class:`ADMMPruner`).

Every mask is computed by the core; the training-aware pruners run the user's trainer or
evaluator with hooks that call the core's statistics functions, as NNI's do.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from purecompress.compat.evaluator import Evaluator, ForwardHook, Hook, LegacyEvaluator, TensorHook
from purecompress.compat.pruning.base import NniMasks, Pruner, sparsities
from purecompress.compat.pruning.tools import (
    APoZRankMetricsCalculator,
    BankSparsityAllocator,
    DataCollector,
    DependencyAwareAllocator,
    DistMetricsCalculator,
    EvaluatorBasedHookDataCollector,
    EvaluatorBasedTargetDataCollector,
    GlobalSparsityAllocator,
    HookDataNormMetricsCalculator,
    MeanRankMetricsCalculator,
    MetricsCalculator,
    NormalSparsityAllocator,
    NormMetricsCalculator,
    Scaling,
    SparsityAllocator,
    TargetDataCollector,
    channel_scaler,
)
from purecompress.compat.schema import EXCLUDE, GLOBAL, INTERNAL, NORMAL
from purecompress.pruning import (
    AdmmState,
    Block,
    TaylorStats,
    activation_fn,
    admm,
    admm_masks,
    admm_penalty,
    batch_activation_stats,
    bias_masks,
    channel_dim_of,
    from_config_list,
    slim_penalty,
    taylor_term,
)
from purecompress.selectors import ConfigError, select
from purecompress.transform import Transform

__all__ = [
    "ADMMPruner",
    "ActivationAPoZRankPruner",
    "ActivationMeanRankPruner",
    "BasicPruner",
    "FPGMPruner",
    "L1NormPruner",
    "L2NormPruner",
    "LevelPruner",
    "SlimPruner",
    "TaylorFOWeightPruner",
]


_CHANNEL_TYPES = ("Conv2d", "Linear")



def check_mode(name: str, mode: str, allowed: Sequence[str]) -> str:
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
        """collect -> calculate_metrics -> allocate -> load the core masks; returns ``(model, masks)``.

        The allocator receives the targets' sparsities (from the wrappers' configs, NNI's surface)
        and the current masks as arguments; its core masks go to the wrappers as they are.
        """
        model = self._bound()
        if self.data_collector is None or self.metrics_calculator is None or self.sparsity_allocator is None:
            raise RuntimeError(f"{type(self).__name__} has no data_collector/metrics_calculator/sparsity_allocator; "
                               "reset_tools() must set them")
        data = self.data_collector.collect()
        metrics = self.metrics_calculator.calculate_metrics(data)
        masks = self.sparsity_allocator.allocate(metrics, self.targets(), prior=self.weight_masks())
        self.load_records(masks)
        return model, self.nni_masks(masks)



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
        self.mode = check_mode("LevelPruner", mode, ("normal", "balance"))
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
        self.mode = check_mode(type(self).__name__, mode, ("normal", "dependency_aware"))
        self.dummy_input = dummy_input
        super().__init__(model, config_list)

    def _channel_tools(self, metric: MetricsCalculator) -> None:
        scalers = channel_scaler()
        _reset_collector(self)
        self.metrics_calculator = self.metrics_calculator or metric
        if self.sparsity_allocator is None:
            if self.mode == "dependency_aware":
                # Imported here: the allocator lives with the graph-based pruners, which import this module.
                from purecompress.compat.pruning.tools import DependencyAwareAllocator

                self.sparsity_allocator = DependencyAwareAllocator(self, self.dummy_input, scalers)
            else:
                self.sparsity_allocator = NormalSparsityAllocator(self, scalers)



class L1NormPruner(_ChannelPruner):
    """Prunes the output channels (conv filters, linear rows) with the smallest L1 norm.

    Args:
        model: the model.
        config_list: ``sparsity``, ``op_types`` (Conv2d, Linear), ``op_names``, ``op_partial_names``, ``exclude``.
        mode: ``'normal'``, or ``'dependency_aware'``: layers whose channels meet (add, cat, groups)
            share one mask (:class:`~purecompress.compat.pruning.DependencyAwareAllocator`).
        dummy_input: an example input, required by ``'dependency_aware'``.
    """

    p = 1  # NNI's NormPruner attribute

    def reset_tools(self) -> None:
        """Weight collector, L1 norm per output channel, per-layer allocator."""
        self._channel_tools(NormMetricsCalculator(p=self.p, scalers=channel_scaler()))



class L2NormPruner(_ChannelPruner):
    """Prunes the output channels with the smallest L2 norm (arguments as :class:`L1NormPruner`)."""

    p = 2  # NNI's NormPruner attribute

    def reset_tools(self) -> None:
        """Weight collector, L2 norm per output channel, per-layer allocator."""
        self._channel_tools(NormMetricsCalculator(p=self.p, scalers=channel_scaler()))



class FPGMPruner(_ChannelPruner):
    """Prunes the output channels nearest the geometric median (arguments as :class:`L1NormPruner`)."""

    def reset_tools(self) -> None:
        """Weight collector, summed distance per output channel, per-layer allocator."""
        self._channel_tools(DistMetricsCalculator(p=2, scalers=channel_scaler()))





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



class TrainingPruner(BasicPruner):
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

    def _collect_trained_weights(self, loss_patch: Callable[[Tensor], Tensor], max_epochs: int) -> None:
        """Collect the weights after ``max_epochs`` of training with ``loss_patch`` added to the loss.

        A collector already set (a second ``reset_tools``, or one the script set) gets the patch again.
        """
        if self.data_collector is None:
            self.data_collector = EvaluatorBasedTargetDataCollector(self, self.evaluator, loss_patch=loss_patch,
                                                                    max_epochs=max_epochs)
        else:
            self.data_collector.reset(loss_patch=loss_patch)  # type: ignore[call-arg]

    def _collect_hooks(self, hooks: Mapping[str, Mapping[str, Hook]], max_steps: int) -> None:
        """Collect what ``hooks`` gather during ``max_steps`` training steps.

        A collector already set (a second ``reset_tools``, or one the script set) gets the new hooks.
        """
        if self.data_collector is None:
            self.data_collector = EvaluatorBasedHookDataCollector(self, self.evaluator, hooks=hooks,
                                                                  max_steps=max_steps)
        else:
            self.data_collector.reset(hooks=hooks)  # type: ignore[call-arg]

    def _dependency_allocator(self, dummy_input: Any, scalers: Scaling) -> DependencyAwareAllocator:
        if dummy_input is None:
            dummy_input = self.evaluator.get_dummy_input()
        return DependencyAwareAllocator(self, dummy_input, scalers)

    def compress(self) -> tuple[nn.Module, NniMasks]:
        """Train and collect, compute metrics, allocate, load masks; then unbind the evaluator."""
        try:
            return super().compress()
        finally:  # on every exit path (the user's trainer raising, Ctrl-C): no hook or patch stays behind
            self.evaluator.unbind_model()




class SlimPruner(TrainingPruner):
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
        self.mode = check_mode("SlimPruner", parsed["mode"], ("normal", "global"))
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



class _ActivationPruner(TrainingPruner):
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
        self.mode = check_mode(type(self).__name__, parsed["mode"], ("normal", "dependency_aware"))
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
        scalers = channel_scaler()
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
        return APoZRankMetricsCalculator(channel_scaler())



class ActivationMeanRankPruner(_ActivationPruner):
    """Prunes the output channels with the smallest mean activation (arguments as APoZ)."""

    def _metrics(self) -> MetricsCalculator:
        return MeanRankMetricsCalculator(channel_scaler())



class TaylorFOWeightPruner(TrainingPruner):
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
        self.mode = check_mode("TaylorFOWeightPruner", parsed["mode"], ("normal", "global", "dependency_aware"))
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
        scalers = channel_scaler()
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



def _rho_of(config_list: Sequence[Mapping[str, Any]]) -> list[float | None]:
    out: list[float | None] = []
    for index, entry in enumerate(config_list):
        rho = entry.get("rho") if isinstance(entry, Mapping) else None
        if rho is not None and (not isinstance(rho, float) or rho <= 0):
            raise ConfigError(index, "rho", f"must be a float > 0, got {rho!r}")
        out.append(rho)
    return out



class ADMMPruner(TrainingPruner):
    """ADMM pruning: ``iterations`` rounds of training with NNI's penalty, each followed by one
    projection of :func:`purecompress.admm` (the pruner holds that transform and its state).

    ``(model, config_list, evaluator, iterations, training_epochs, granularity='fine-grained')``
    or the old ``(model, config_list, trainer, traced_optimizer, criterion, iterations,
    training_epochs, granularity)``. Config key ``rho`` (default 1e-4). The penalty is NNI's
    ``rho/2 * sqrt(||W - Z + U||)`` (see :func:`purecompress.admm_penalty`, ``form='nni'``), without
    NNI's NaN on the first step; the final masks are :func:`purecompress.admm_masks` of the trained
    weights plus NNI's bias masks.
    """

    new_api = ("evaluator", "iterations", "training_epochs", "granularity")
    old_api = ("trainer", "traced_optimizer", "criterion", "iterations", "training_epochs", "granularity")
    defaults = {"granularity": "fine-grained"}
    config_forms = (NORMAL, INTERNAL, EXCLUDE)

    def __init__(self, model: nn.Module | None, config_list: list[dict] | None, *args: Any, **kwargs: Any) -> None:
        parsed = self._init_training(model, args, kwargs)
        self.iterations: int = parsed["iterations"]
        self.training_epochs: int = parsed["training_epochs"]
        self.granularity = check_mode("ADMMPruner granularity", parsed["granularity"],
                                       ("fine-grained", "coarse-grained"))
        self._transform: Transform | None = None
        self._state: AdmmState | None = None
        super().__init__(model, config_list)

    def reset(self, model: nn.Module | None = None, config_list: list[dict] | None = None) -> None:
        """Bind and wrap (``rho`` is read here and stored on each wrapper's config); Z = W, U = 0."""
        if config_list is not None and not isinstance(config_list, (list, tuple)):
            raise ConfigError(None, None, f"config_list must be a list of dicts, got {type(config_list).__name__}")
        bad = next((i for i, e in enumerate(config_list or []) if not isinstance(e, Mapping)), None)
        if bad is not None:
            raise ConfigError(bad, None, f"each entry must be a dict, got {type(config_list[bad]).__name__}")
        rhos = _rho_of(config_list or [])
        stripped = [{k: v for k, v in e.items() if k != "rho"} for e in (config_list or [])]
        self._unwrap_model()
        plan = select(model, from_config_list(stripped), warn=False) if isinstance(model, nn.Module) else ()
        super().reset(model, stripped)
        for entry in plan:
            if rhos[entry.index] is not None:
                self.get_modules_wrapper()[entry.module].config["rho"] = rhos[entry.index]
        self._start()

    def _weights(self) -> dict[str, Tensor]:
        return {f"{name}.weight": w.weight for name, w in self.get_modules_wrapper().items()}

    def _start(self) -> None:
        """The core transform for the wrappers' current configs, and its first state (Z = W, U = 0)."""
        targets = self.targets()
        rho = {f"{name}.weight": float(w.config.get("rho", 1e-4)) for name, w in self.get_modules_wrapper().items()}
        block = Block.element() if self.granularity == "fine-grained" else Block.channel()
        self._transform = admm(list(targets), sparsities(targets), rho=rho, block=block)
        self._state = self._transform.init({n: w.detach() for n, w in self._weights().items()})

    def loss_patch(self, origin_loss: Tensor) -> Tensor:
        """``origin_loss + sum rho/2 * sqrt(||W - Z + U||)`` (NNI's form, :func:`purecompress.admm_penalty`)."""
        assert self._state is not None
        return origin_loss + admm_penalty(self._weights(), self._state, form="nni")

    def reset_tools(self) -> None:
        """Train ``training_epochs`` per iteration with the penalty (no metric or allocator tool: the
        core transform projects and allocates)."""
        self._bind_evaluator()
        self._collect_trained_weights(self.loss_patch, self.training_epochs)

    def compress(self) -> tuple[nn.Module, NniMasks]:
        """``iterations`` x (train, ``update``: Z = prune(W + U), U += W - Z), then masks from the trained W."""
        model = self._bound()
        assert self.data_collector is not None
        self._start()
        assert self._transform is not None and self._state is not None
        weights = {n: w.detach() for n, w in self._weights().items()}
        for _ in range(self.iterations):
            data = self.data_collector.collect()
            weights = {f"{name}.weight": d["weight"] for name, d in data.items()}
            _, self._state = self._transform.update(weights, self._state)
        targets = self.targets()
        shapes = {n[: -len("weight")] + "bias": t.bias for n, t in targets.items() if t.bias is not None}
        masks = bias_masks(admm_masks(weights, self._state), shapes)  # type: ignore[arg-type]
        self.load_records(masks)
        self._start()  # as NNI, the next compress starts again from Z = W, U = 0
        self.evaluator.unbind_model()
        return model, self.nni_masks(masks)

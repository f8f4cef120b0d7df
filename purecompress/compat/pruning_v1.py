"""The NNI 1.x pruners NNI 2.10 still ships (``nni.algorithms.compression.pytorch.pruning``), on the core.

``LevelPruner``, ``L1FilterPruner``, ``L2FilterPruner``, ``FPGMPruner``, ``SlimPruner``,
``TaylorFOWeightFilterPruner``, ``ActivationAPoZRankFilterPruner``, ``ActivationMeanRankFilterPruner``
and ``AGPPruner`` with their 1.x call pattern: built with ``(model, config_list, ...)``, the modules
wrapped at once (the weight stays a Parameter of ``wrapper.module``, as in 1.x), ``compress()`` runs
the 1.x training loop (``trainer(model, optimizer=, criterion=, epoch=)``) and sets the masks,
``calc_mask(wrapper)`` returns ``{'weight_mask', 'bias_mask'}``, ``export_model`` writes the masked
state_dict, the mask file and optionally ONNX; the filter pruners take ``dependency_aware=True`` with
``dummy_input``. Every score is a core metric (:func:`purecompress.l1_norm`, :func:`~purecompress.fpgm`,
:func:`~purecompress.taylor_fo`, :func:`~purecompress.apoz`, ...), every mask a core allocation
(:func:`~purecompress.allocate_per_layer`, :func:`~purecompress.allocate_global`,
:func:`~purecompress.allocate_dependency_aware`). The other 1.x names (NetAdapt, Sensitivity, the
1.x ADMM / AutoCompress / AMC / simulated annealing / lottery ticket pruners ...) raise an error
that names their NNI 2.x counterpart, or says there is none.
"""

from __future__ import annotations

import abc
import logging
import os
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from purecompress.compat.schema import EXCLUDE, NORMAL, SchemaError, schema_errors, validate
from purecompress.graph import channel_dependency, group_dependency
from purecompress.pruning import (
    ActivationStats,
    Mask,
    Masks,
    Metric,
    TaylorStats,
    agp_schedule,
    allocate_dependency_aware,
    allocate_global,
    allocate_per_layer,
    apoz,
    batch_activation_stats,
    bias_masks,
    bn_scale,
    channel_dim_of,
    channel_keep,
    fpgm,
    l1_norm,
    l2_norm,
    level,
    mean_activation,
    slim_penalty_grad,
    taylor_accumulate,
    taylor_fo,
)
from purecompress.selectors import ConfigError, select

__all__ = [
    "AGPPruner",
    "ActivationAPoZRankFilterPruner",
    "ActivationMeanRankFilterPruner",
    "DependencyAwarePruner",
    "FPGMPruner",
    "L1FilterPruner",
    "L2FilterPruner",
    "LevelPruner",
    "NOT_PROVIDED",
    "SlimPruner",
    "TaylorFOWeightFilterPruner",
    "WeightMasker",
    # 1.x names that raise the error naming their 2.x counterpart:
    "ADMMPruner",
    "AMCPruner",
    "AutoCompressPruner",
    "LotteryTicketPruner",
    "NetAdaptPruner",
    "SensitivityPruner",
    "SimulatedAnnealingPruner",
    "TransformerHeadPruner",
]

_logger = logging.getLogger(__name__)

_V2 = "nni.compression.pytorch.pruning"
#: The NNI 1.x pruner names not provided, and why (their NNI 2.x counterpart, or none).
NOT_PROVIDED: dict[str, str] = {
    "ADMMPruner": f"use the 2.x {_V2}.ADMMPruner(model, config_list, evaluator, iterations, training_epochs)",
    "AMCPruner": f"use the 2.x {_V2}.AMCPruner(total_episode, dummy_input, pruning_algorithm, ...)",
    "AutoCompressPruner": f"use the 2.x {_V2}.AutoCompressPruner(model, config_list, total_iteration, ...)",
    "LotteryTicketPruner": f"use the 2.x {_V2}.LotteryTicketPruner(model, config_list, pruning_algorithm, ...)",
    "SimulatedAnnealingPruner": f"use the 2.x {_V2}.SimulatedAnnealingPruner(model, config_list, evaluator, ...)",
    "NetAdaptPruner": "NNI 2.x has no counterpart of it (nor does purecompress)",
    "SensitivityPruner": "NNI 2.x has no counterpart of it; see nni.compression.pytorch.utils.SensitivityAnalysis",
    "TransformerHeadPruner": "NNI 2.x has no counterpart of it (nor does purecompress)",
}


def _not_provided(name: str) -> type:
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        del self, args, kwargs
        raise NotImplementedError(f"NNI 1.x's {name} is not provided by purecompress: {NOT_PROVIDED[name]}")

    doc = f"NNI 1.x's ``{name}``, not provided: constructing it raises NotImplementedError ({NOT_PROVIDED[name]})."
    return type(name, (), {"__init__": __init__, "__doc__": doc, "__module__": __name__})


ADMMPruner = _not_provided("ADMMPruner")
AMCPruner = _not_provided("AMCPruner")
AutoCompressPruner = _not_provided("AutoCompressPruner")
LotteryTicketPruner = _not_provided("LotteryTicketPruner")
NetAdaptPruner = _not_provided("NetAdaptPruner")
SensitivityPruner = _not_provided("SensitivityPruner")
SimulatedAnnealingPruner = _not_provided("SimulatedAnnealingPruner")
TransformerHeadPruner = _not_provided("TransformerHeadPruner")

NniMaskDict = dict[str, Tensor | None]


class PrunerModuleWrapper(nn.Module):
    """NNI 1.x's wrapper: ``module`` keeps its Parameters; each forward masks their data in place.

    Args:
        module: the module to prune (with a ``weight``).
        module_name: its qualified name; module_type: its class name.
        config: the config entry that selected it (a script may replace it).
        pruner: the pruner.

    Attributes:
        weight_mask, bias_mask: float 0/1 buffers (``bias_mask`` None without a bias).
        if_calculated: whether this round's mask is computed (1.x's flag; a script may reset it).
    """

    def __init__(self, module: nn.Module, module_name: str, module_type: str, config: dict[str, Any],
                 pruner: Pruner) -> None:
        super().__init__()
        self.module, self.name, self.type, self.config = module, module_name, module_type, config
        self.pruner = [pruner]  # a list: the pruner must not become a submodule
        self.if_calculated = False
        weight = module.weight
        self.register_buffer("weight_mask", torch.ones_like(weight.detach()))
        bias = getattr(module, "bias", None)
        self.register_buffer("bias_mask", None if bias is None else torch.ones_like(bias.detach()))

    def forward(self, *inputs: Any) -> Any:
        with torch.no_grad():  # 1.x: the masked values are written into the Parameters themselves
            self.module.weight.mul_(self.weight_mask)
            if self.bias_mask is not None and getattr(self.module, "bias", None) is not None:
                self.module.bias.mul_(self.bias_mask)
        return self.module(*inputs)


class _Scorer(abc.ABC):
    """How a 1.x algorithm scores a layer (abstract): the core metric of its (masked) weight, once
    it has the statistics it needs."""

    #: 'element' (Level) or 'channel' (the filter pruners, Slim's BatchNorm channels).
    granularity = "channel"

    def attach(self, pruner: Pruner) -> None:
        """Start gathering statistics (optimizer patches, hooks); the default needs none."""
        del pruner

    @abc.abstractmethod
    def metrics(self, pruner: Pruner, wrappers: Sequence[PrunerModuleWrapper]) -> dict[str, Metric] | None:
        """``{'<module>.weight': Metric}`` of ``wrappers``; None while statistics are missing."""


def _masked_weights(wrappers: Sequence[PrunerModuleWrapper]) -> dict[str, Tensor]:
    return {f"{w.name}.weight": w.module.weight.detach() * w.weight_mask for w in wrappers}


class _WeightScorer(_Scorer):
    def __init__(self, metric: Callable[[Mapping[str, Tensor], list[str]], Mapping[str, Metric]],
                 granularity: str = "channel") -> None:
        self.metric, self.granularity = metric, granularity

    def metrics(self, pruner: Pruner, wrappers: Sequence[PrunerModuleWrapper]) -> dict[str, Metric]:
        params = _masked_weights(wrappers)
        return dict(self.metric(params, list(params)))


class _TaylorScorer(_Scorer):
    """``(w * grad)**2`` summed over the first ``batches`` optimizer steps (after each step, as 1.x)."""

    def __init__(self, batches: int) -> None:
        self.batches, self.steps = batches, 0
        self.stats: dict[str, TaylorStats] = {}

    def attach(self, pruner: Pruner) -> None:
        pruner.patch_optimizer(lambda: self._step(pruner))

    def _step(self, pruner: Pruner) -> None:
        if self.steps >= self.batches:
            return
        wrappers = pruner.get_modules_wrapper()
        grads = {f"{w.name}.weight": w.module.weight.grad for w in wrappers if w.module.weight.grad is not None}
        params = {f"{w.name}.weight": w.module.weight.detach() for w in wrappers}
        self.stats = taylor_accumulate(self.stats, params, grads)
        self.steps += 1

    def metrics(self, pruner: Pruner, wrappers: Sequence[PrunerModuleWrapper]) -> dict[str, Metric] | None:
        names = [f"{w.name}.weight" for w in wrappers]
        if self.steps < self.batches or any(n not in self.stats for n in names):
            return None
        return dict(taylor_fo({n: self.stats[n] for n in names}))


class _ActivationScorer(_Scorer):
    """APoZ or mean activation of each wrapper's output over its forward calls (1.x counts every
    forward until the masks are set)."""

    def __init__(self, kind: str, batches: int, activation: str) -> None:
        if activation not in ("relu", "relu6"):
            raise ValueError(f"activation must be 'relu' or 'relu6', got {activation!r}")
        self.kind, self.batches, self.activation = kind, batches, activation
        self.stats: dict[str, ActivationStats] = {}
        self.handles: list[Any] = []

    def attach(self, pruner: Pruner) -> None:
        for w in pruner.get_modules_wrapper():
            def hook(module: nn.Module, inputs: Any, output: Tensor, w: PrunerModuleWrapper = w) -> None:
                del module, inputs
                new = batch_activation_stats(output, channel_dim_of(w.module), self.activation)
                self.stats[w.name] = new if w.name not in self.stats else self.stats[w.name] + new
            self.handles.append(w.register_forward_hook(hook))

    def metrics(self, pruner: Pruner, wrappers: Sequence[PrunerModuleWrapper]) -> dict[str, Metric] | None:
        if any(w.name not in self.stats or self.stats[w.name].batches < self.batches for w in wrappers):
            return None
        stats = {w.name: self.stats[w.name] for w in wrappers}
        params = {f"{w.name}.weight": w.module.weight for w in wrappers}
        return dict((apoz if self.kind == "apoz" else mean_activation)(stats, params))

    def detach(self) -> None:
        """Remove the hooks (the masks are set)."""
        for handle in self.handles:
            handle.remove()
        self.handles = []


def _scorer(algorithm: str, batches: int = 1, activation: str = "relu") -> _Scorer:
    if algorithm == "level":
        return _WeightScorer(level, "element")
    if algorithm == "l1":
        return _WeightScorer(l1_norm)
    if algorithm == "l2":
        return _WeightScorer(l2_norm)
    if algorithm == "fpgm":
        return _WeightScorer(fpgm)
    if algorithm == "slim":
        return _WeightScorer(bn_scale)
    if algorithm == "taylorfo":
        return _TaylorScorer(batches)
    if algorithm in ("apoz", "mean_activation"):
        return _ActivationScorer("apoz" if algorithm == "apoz" else "mean", batches, activation)
    raise ValueError(f"pruning_algorithm must be one of 'level', 'l1', 'l2', 'fpgm', 'slim', 'taylorfo', 'apoz', "
                     f"'mean_activation', got {algorithm!r}")


class Pruner:
    """NNI 1.x's pruner base: validates, wraps the selected modules at once, computes masks.

    Args:
        model: the model (wrapped in place).
        config_list: 1.x configs: ``sparsity`` (a float in (0, 1)), ``op_types``, ``op_names``, ``exclude``.
        optimizer: the training optimizer (its ``step`` is patched by the pruners that need it).

    Attributes:
        bound_model, config_list, optimizer; modules_wrapper: the wrappers, in ``named_modules()`` order.
    """

    #: The op types every entry may select (None: any); whether ``sparsity`` may be 0 (AGP only).
    op_types: tuple[str, ...] | None = None
    zero_sparsity: bool = False

    def __init__(self, model: nn.Module, config_list: list[dict],
                 optimizer: torch.optim.Optimizer | None = None) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"Only a torch.nn.Module can be pruned, got {type(model).__name__}")
        self.bound_model, self.config_list, self.optimizer = model, config_list, optimizer
        self.validate_config(model, config_list)
        self.modules_wrapper: list[PrunerModuleWrapper] = []
        self.is_wrapped = False
        for module_name, config in self._selected():
            module = model.get_submodule(module_name)
            self.modules_wrapper.append(PrunerModuleWrapper(module, module_name, type(module).__name__, config, self))
        self._wrap_model()

    def validate_config(self, model: nn.Module, config_list: list[dict]) -> None:
        """Check ``config_list`` as NNI 1.x's schema does.

        Raises:
            SchemaError: a ConfigError naming the entry and key, also ``schema.SchemaError``.
        """
        del model
        with schema_errors():
            configs = validate(config_list, forms=(NORMAL, EXCLUDE), op_types=self.op_types)
            for index, config in enumerate(configs):
                if config.sparsity == 0.0 and not self.zero_sparsity:
                    raise ConfigError(index, "sparsity", "must be in (0, 1) for NNI 1.x's pruners, got 0.0")

    def _selected(self) -> list[tuple[str, dict[str, Any]]]:
        with schema_errors():
            configs = validate(self.config_list, forms=(NORMAL, EXCLUDE), op_types=self.op_types)
        plan = select(self.bound_model, configs, warn=False)
        out = []
        for entry in plan:
            config = dict(self.config_list[entry.index])
            if not isinstance(getattr(self.bound_model.get_submodule(entry.module), "weight", None), Tensor):
                raise SchemaError(entry.index, "op_types", f"module {entry.module!r} ({entry.type_name}) has no weight "
                                  "to prune")
            out.append((entry.module, config))
        return out

    def get_modules_wrapper(self) -> list[PrunerModuleWrapper]:
        """The wrappers, in model order."""
        return self.modules_wrapper

    def get_modules_to_compress(self) -> list[tuple[Any, dict[str, Any]]]:
        """``[(layer, config)]``: each layer with ``.name``, ``.module``, ``.type``."""
        return [(types.SimpleNamespace(name=w.name, module=w.module, type=w.type), w.config)
                for w in self.modules_wrapper]

    def set_wrappers_attribute(self, name: str, value: Any) -> None:
        """Set ``name`` on every wrapper."""
        for w in self.modules_wrapper:
            setattr(w, name, value)

    def _set(self, name: str, module: nn.Module) -> None:
        parent, _, leaf = name.rpartition(".")
        setattr(self.bound_model.get_submodule(parent) if parent else self.bound_model, leaf, module)

    def _wrap_model(self) -> None:
        if not self.is_wrapped:
            for w in self.modules_wrapper:
                self._set(w.name, w)
            self.is_wrapped = True

    def _unwrap_model(self) -> None:
        if self.is_wrapped:
            for w in self.modules_wrapper:
                self._set(w.name, w.module)
            self.is_wrapped = False

    def patch_optimizer(self, *tasks: Callable[[], None]) -> None:
        """Run ``tasks`` after each ``optimizer.step()`` (no optimizer: nothing to patch)."""
        self._patch(tasks, before=False)

    def patch_optimizer_before(self, *tasks: Callable[[], None]) -> None:
        """Run ``tasks`` before each ``optimizer.step()``."""
        self._patch(tasks, before=True)

    def _patch(self, tasks: Sequence[Callable[[], None]], *, before: bool) -> None:
        if self.optimizer is None:
            return
        old = self.optimizer.step

        def step(_: torch.optim.Optimizer, *args: Any, **kwargs: Any) -> Any:
            if before:
                for task in tasks:
                    task()
            out = old(*args, **kwargs)
            if not before:
                for task in tasks:
                    task()
            return out

        self.optimizer.step = types.MethodType(step, self.optimizer)  # type: ignore[method-assign]

    def compress(self) -> nn.Module:
        """Compute and load the masks; returns the (wrapped) model."""
        self.update_mask()
        return self.bound_model

    def update_mask(self) -> None:
        """:meth:`calc_mask` for each wrapper; a returned mask goes into its buffers."""
        for index, wrapper in enumerate(self.modules_wrapper):
            self._load(wrapper, self.calc_mask(wrapper, wrapper_idx=index))

    @staticmethod
    def _load(wrapper: PrunerModuleWrapper, masks: NniMaskDict | None) -> None:
        for key, mask in (masks or {}).items():
            if mask is not None:
                setattr(wrapper, key, mask)

    def calc_mask(self, wrapper: PrunerModuleWrapper, wrapper_idx: int | None = None) -> NniMaskDict | None:
        """``{'weight_mask': tensor, 'bias_mask': tensor or None}`` for ``wrapper``, or None when
        this round's mask is computed already (``wrapper.if_calculated``) or statistics are missing."""
        raise NotImplementedError(f"{type(self).__name__} computes no masks")

    def export_model(self, model_path: str | os.PathLike[str], mask_path: str | os.PathLike[str] | None = None,
                     onnx_path: str | os.PathLike[str] | None = None, input_shape: Sequence[int] | None = None,
                     device: torch.device | None = None, dummy_input: Any = None,
                     opset_version: int | None = None) -> None:
        """Save the masked ``state_dict`` (original keys), optionally the masks
        ``{module: {'weight': mask, 'bias': mask or None}}`` and an ONNX model."""
        if model_path is None:
            raise ValueError("model_path must be specified")
        self._unwrap_model()
        try:
            masks = {}
            with torch.no_grad():
                for w in self.modules_wrapper:
                    w.module.weight.mul_(w.weight_mask)
                    if w.bias_mask is not None and getattr(w.module, "bias", None) is not None:
                        w.module.bias.mul_(w.bias_mask)
                    masks[w.name] = {"weight": w.weight_mask, "bias": w.bias_mask}
            torch.save(self.bound_model.state_dict(), model_path)
            if mask_path is not None:
                torch.save(masks, mask_path)
            if onnx_path is not None:
                if input_shape is None and dummy_input is None:
                    raise ValueError("input_shape or dummy_input must be given to export an ONNX model")
                x = dummy_input if dummy_input is not None else torch.zeros(*input_shape, device=device or "cpu")
                kwargs = {} if opset_version is None else {"opset_version": opset_version}
                torch.onnx.export(self.bound_model, x if isinstance(x, tuple) else (x,), onnx_path, dynamo=False,
                                  **kwargs)
        finally:
            self._wrap_model()

    def load_model_state_dict(self, model_state: Mapping[str, Tensor]) -> None:
        """Load a state dict saved from the unwrapped model."""
        wrapped = self.is_wrapped
        self._unwrap_model()
        self.bound_model.load_state_dict(model_state)
        if wrapped:
            self._wrap_model()

    def get_pruned_weights(self, dim: int = 0) -> dict[str, tuple[int, int]]:
        """Log (and return) ``{module: (kept, total)}`` slices along ``dim`` of each weight mask."""
        out = {}
        for w in self.modules_wrapper:
            keep = channel_keep(Mask.from_dense(w.weight_mask), dim)
            out[w.name] = (int(keep.sum()), int(w.weight_mask.shape[dim]))
            _logger.info("simulated prune %s remain/total: %d/%d", w.name, *out[w.name])
        return out


class _MaskingPruner(Pruner):
    """A 1.x pruner whose masks come from a :class:`_Scorer` and the core allocators (abstract:
    leaves choose the scorer and how :meth:`compress` trains).

    Args:
        model, config_list, optimizer: see :class:`Pruner`.
        dependency_aware: channel masks shared by dependent layers (needs ``dummy_input``).
        dummy_input: example input for the dependency analysis.
    """

    supports_dependency_aware = True
    #: One allocation pools every layer (Slim; Taylor's ``global_sort``).
    pools_layers = False

    def __init__(self, model: nn.Module, config_list: list[dict], optimizer: torch.optim.Optimizer | None,
                 scorer: _Scorer, dependency_aware: bool = False, dummy_input: Any = None) -> None:
        super().__init__(model, config_list, optimizer)
        self.scorer = scorer
        self.dependency_aware, self.dummy_input = dependency_aware, dummy_input
        self.channel_sets: list[tuple[str, ...]] = []
        self.groups: dict[str, int] = {}
        if dependency_aware:
            if not self.supports_dependency_aware:
                raise ValueError(f"{type(self).__name__} does not support dependency_aware")
            if dummy_input is None:
                raise ValueError("dependency_aware=True needs dummy_input (an example input of the model, e.g. "
                                 "torch.rand(1, 3, 224, 224)) to find the layers whose channels must agree")
            self._unwrap_model()
            try:
                self.channel_sets = channel_dependency(model, dummy_input, couple_depthwise=False)  # NNI's sets
                self.groups = group_dependency(model, dummy_input)
            finally:
                self._wrap_model()
        scorer.attach(self)

    def _sparsity(self, wrapper: PrunerModuleWrapper) -> float:
        if "sparsity" not in wrapper.config:
            raise ConfigError(None, "sparsity", f"module {wrapper.name!r} was selected by a config without a sparsity")
        return float(wrapper.config["sparsity"])

    def _records(self, wrappers: Sequence[PrunerModuleWrapper]) -> Masks:
        return {f"{w.name}.weight": Mask.from_dense(w.weight_mask) for w in wrappers}

    def _allocate(self, wrappers: Sequence[PrunerModuleWrapper], sparsity: Mapping[str, float]) -> Masks | None:
        """Core masks for ``wrappers`` (keys ``'<module>.weight'`` / ``.bias``), or None while statistics miss."""
        metrics = self.scorer.metrics(self, wrappers)
        if metrics is None:
            return None
        prior = self._records(wrappers)
        if self.pools_layers:
            caps = {n: (m.score.shape[0] - 0.5) / m.score.shape[0] for n, m in metrics.items()}  # 1.x keeps 1 filter
            first = float(self.config_list[0]["sparsity"])
            masks = allocate_global(metrics, first, max_sparsity=caps, prior=prior, below_target=True)
        elif self.dependency_aware:
            masks = allocate_dependency_aware(metrics, dict(sparsity), channel_sets=self.channel_sets,
                                              groups=self.groups, prior=prior)
        else:
            masks = allocate_per_layer(metrics, dict(sparsity), prior=prior)
        if self.scorer.granularity == "element":
            return masks  # 1.x's level masks leave the bias dense
        shapes = {f"{w.name}.bias": tuple(w.module.bias.shape) for w in wrappers
                  if getattr(w.module, "bias", None) is not None}
        return bias_masks(masks, shapes)

    def _skip(self, wrapper: PrunerModuleWrapper, sparsity: float) -> bool:
        """1.x leaves a layer of fewer than 2 filters, or one that would prune none, as it is."""
        if self.scorer.granularity == "element" or self.pools_layers:
            return False
        channels = wrapper.weight_mask.shape[0]
        return channels < 2 or int(channels * sparsity) < 1

    def _dense(self, wrapper: PrunerModuleWrapper, masks: Masks) -> NniMaskDict:
        weight = masks[f"{wrapper.name}.weight"].to_dense(wrapper.weight_mask.dtype).to(wrapper.weight_mask.device)
        bias = masks.get(f"{wrapper.name}.bias")
        return {"weight_mask": weight,
                "bias_mask": wrapper.bias_mask if bias is None or wrapper.bias_mask is None else
                bias.to_dense(wrapper.bias_mask.dtype).to(wrapper.bias_mask.device)}

    def _mask_for(self, wrapper: PrunerModuleWrapper, sparsity: float) -> NniMaskDict | None:
        if self._skip(wrapper, sparsity):
            return {"weight_mask": wrapper.weight_mask.clone(),
                    "bias_mask": None if wrapper.bias_mask is None else wrapper.bias_mask.clone()}
        group = self.modules_wrapper if self.pools_layers else [wrapper]
        sparsities = {f"{w.name}.weight": sparsity if w is wrapper else self._sparsity(w) for w in group}
        masks = self._allocate(group, sparsities)
        return None if masks is None else self._dense(wrapper, masks)

    def calc_mask(self, wrapper: PrunerModuleWrapper, wrapper_idx: int | None = None) -> NniMaskDict | None:
        del wrapper_idx
        if wrapper.if_calculated:
            return None
        masks = self._mask_for(wrapper, self._sparsity(wrapper))
        if masks is not None:
            wrapper.if_calculated = True
        return masks

    def update_mask(self) -> None:
        if not self.dependency_aware:
            super().update_mask()
        else:  # one allocation for all layers: the dependency sets cut across them
            todo = [w for w in self.modules_wrapper if not w.if_calculated]
            masks = self._allocate(todo, {f"{w.name}.weight": self._sparsity(w) for w in todo}) if todo else None
            if masks is not None:
                for w in todo:
                    self._load(w, self._dense(w, masks))
                    w.if_calculated = True
        if isinstance(self.scorer, _ActivationScorer) and all(w.if_calculated for w in self.modules_wrapper):
            self.scorer.detach()


class WeightMasker:
    """NNI 1.x's masker plug-in (``pruning.weight_masker.WeightMasker``): a user's own mask rule.

    Subclass it, override :meth:`calc_mask`, and set an instance as ``pruner.masker`` of a
    :class:`DependencyAwarePruner`; the pruner then asks it for every wrapper's masks.

    Args:
        model: the model being pruned.
        pruner: the pruner that will call this masker.
        **kwargs: kept for the subclass (NNI passes algorithm options this way).
    """

    def __init__(self, model: nn.Module, pruner: Pruner, **kwargs: Any) -> None:
        self.model, self.pruner, self.kwargs = model, pruner, kwargs

    def calc_mask(self, sparsity: float, wrapper: PrunerModuleWrapper,
                  wrapper_idx: int | None = None) -> NniMaskDict | None:
        """``{'weight_mask': tensor, 'bias_mask': tensor or None}`` for ``wrapper`` at ``sparsity``."""
        raise NotImplementedError(f"{type(self).__name__}.calc_mask(sparsity, wrapper, wrapper_idx) computes the "
                                  "masks: override it")


class DependencyAwarePruner(_MaskingPruner):
    """NNI 1.x's ``pruning.dependency_aware_pruner.DependencyAwarePruner``: a 1.x pruner whose masks
    come from ``pruning_algorithm`` (``'level'``, ``'l1'``, ``'l2'``, ``'fpgm'``: the core metrics,
    as the named pruners above) or from the :class:`WeightMasker` a script sets as ``self.masker``.

    Args:
        model, config_list, optimizer: see :class:`Pruner`.
        pruning_algorithm: the built-in rule used while ``masker`` is None.
        dependency_aware: channel masks shared by dependent layers (built-in rules only).
        dummy_input: example input for the dependency analysis.
        **algo_kwargs: none are accepted (the built-in rules take no options).

    Attributes:
        masker: a :class:`WeightMasker` that replaces the built-in rule, or None.
    """

    _ALGORITHMS = ("level", "l1", "l2", "fpgm")

    def __init__(self, model: nn.Module, config_list: list[dict], optimizer: torch.optim.Optimizer | None = None,
                 pruning_algorithm: str = "level", dependency_aware: bool = False, dummy_input: Any = None,
                 **algo_kwargs: Any) -> None:
        if pruning_algorithm not in self._ALGORITHMS:
            raise ValueError(f"pruning_algorithm must be one of {self._ALGORITHMS} (or set a WeightMasker as "
                             f"pruner.masker), got {pruning_algorithm!r}")
        if algo_kwargs:
            raise TypeError(f"DependencyAwarePruner: the built-in rules take no options, got {sorted(algo_kwargs)}")
        super().__init__(model, config_list, optimizer, _scorer(pruning_algorithm), dependency_aware, dummy_input)
        self.masker: WeightMasker | None = None

    def calc_mask(self, wrapper: PrunerModuleWrapper, wrapper_idx: int | None = None) -> NniMaskDict | None:
        if self.masker is None:
            return super().calc_mask(wrapper, wrapper_idx)
        if wrapper.if_calculated:
            return None
        masks = self.masker.calc_mask(sparsity=self._sparsity(wrapper), wrapper=wrapper, wrapper_idx=wrapper_idx)
        if masks is not None:
            wrapper.if_calculated = True
        return masks

    def update_mask(self) -> None:
        if self.masker is not None and self.dependency_aware:
            raise ValueError("DependencyAwarePruner: dependency_aware=True shares masks across layers, which a "
                             "per-wrapper WeightMasker cannot do; use dependency_aware=False with a masker")
        if self.masker is None:
            super().update_mask()
        else:
            Pruner.update_mask(self)


class LevelPruner(_MaskingPruner):
    """Each layer prunes its smallest ``|w|`` (1.x ``LevelPruner(model, config_list)``)."""

    supports_dependency_aware = False

    def __init__(self, model: nn.Module, config_list: list[dict]) -> None:
        super().__init__(model, config_list, None, _scorer("level"))


class _FilterPruner(_MaskingPruner):
    op_types = ("Conv2d",)


class L1FilterPruner(_FilterPruner):
    """Conv filters with the smallest L1 norm (:func:`purecompress.l1_norm`)."""

    def __init__(self, model: nn.Module, config_list: list[dict], dependency_aware: bool = False,
                 dummy_input: Any = None) -> None:
        super().__init__(model, config_list, None, _scorer("l1"), dependency_aware, dummy_input)


class L2FilterPruner(_FilterPruner):
    """Conv filters with the smallest L2 norm (:func:`purecompress.l2_norm`)."""

    def __init__(self, model: nn.Module, config_list: list[dict], dependency_aware: bool = False,
                 dummy_input: Any = None) -> None:
        super().__init__(model, config_list, None, _scorer("l2"), dependency_aware, dummy_input)


class FPGMPruner(_FilterPruner):
    """Conv filters nearest the geometric median (:func:`purecompress.fpgm`)."""

    def __init__(self, model: nn.Module, config_list: list[dict], dependency_aware: bool = False,
                 dummy_input: Any = None) -> None:
        super().__init__(model, config_list, None, _scorer("fpgm"), dependency_aware, dummy_input)


class _TrainingPruner(_MaskingPruner):
    """1.x's iterative pruners: ``compress()`` calls ``trainer(model, optimizer=, criterion=, epoch=)``
    for each epoch, then sets the masks."""

    def __init__(self, model: nn.Module, config_list: list[dict], optimizer: torch.optim.Optimizer | None,
                 trainer: Callable[..., Any] | None, criterion: Callable[..., Tensor] | None, scorer: _Scorer,
                 epochs: int = 1, dependency_aware: bool = False, dummy_input: Any = None) -> None:
        super().__init__(model, config_list, optimizer, scorer, dependency_aware, dummy_input)
        self.trainer, self.criterion, self.epochs = trainer, criterion, epochs

    def _train(self, epochs: int) -> None:
        if self.trainer is None:
            raise ValueError(f"{type(self).__name__}.compress() trains: pass trainer(model, optimizer, criterion, "
                             "epoch)")
        for epoch in range(epochs):
            self.trainer(self.bound_model, optimizer=self.optimizer, criterion=self.criterion, epoch=epoch)

    def compress(self) -> nn.Module:
        training = self.bound_model.training
        self.bound_model.train()
        self.set_wrappers_attribute("if_calculated", False)
        self._train(self.epochs)
        if isinstance(self.scorer, _TaylorScorer):  # 1.x: what was gathered counts as enough
            self.scorer.steps = max(self.scorer.steps, self.scorer.batches)
        self.update_mask()
        self.bound_model.train(training)
        return self.bound_model


class SlimPruner(_TrainingPruner):
    """Network slimming: trains with ``scale * sign(gamma)`` added to the BatchNorm weights' gradients,
    then prunes the smallest ``|gamma|`` over all BatchNorm layers together (:func:`purecompress.bn_scale`)."""

    op_types = ("BatchNorm2d",)
    pools_layers = True
    supports_dependency_aware = False

    def __init__(self, model: nn.Module, config_list: list[dict], optimizer: torch.optim.Optimizer | None,
                 trainer: Callable[..., Any] | None, criterion: Callable[..., Tensor] | None,
                 sparsifying_training_epochs: int = 10, scale: float = 0.0001, dependency_aware: bool = False,
                 dummy_input: Any = None) -> None:
        super().__init__(model, config_list, optimizer, trainer, criterion, _scorer("slim"),
                         sparsifying_training_epochs, dependency_aware, dummy_input)
        self.scale = scale
        self.patch_optimizer_before(self._penalty)

    def _penalty(self) -> None:
        params = {w.name: w.module.weight for w in self.modules_wrapper if w.module.weight.grad is not None}
        grads = slim_penalty_grad(params, list(params), self.scale)
        with torch.no_grad():
            for name, grad in grads.items():
                params[name].grad.add_(grad)  # type: ignore[union-attr]

    def _skip(self, wrapper: PrunerModuleWrapper, sparsity: float) -> bool:
        return False

    def _allocate(self, wrappers: Sequence[PrunerModuleWrapper], sparsity: Mapping[str, float]) -> Masks | None:
        metrics = self.scorer.metrics(self, wrappers)
        assert metrics is not None
        first = float(self.config_list[0]["sparsity"])  # 1.x: one threshold over every BatchNorm
        masks = allocate_global(metrics, first, max_sparsity=1.0, prior=self._records(wrappers))
        return {**masks, **{f"{n[:-len('weight')]}bias": m for n, m in masks.items()}}


class TaylorFOWeightFilterPruner(_TrainingPruner):
    """Conv filters with the smallest first-order Taylor importance, summed over the first
    ``sparsifying_training_batches`` optimizer steps (:func:`purecompress.taylor_fo`); ``global_sort``
    ranks all layers together (the first config's sparsity)."""

    op_types = ("Conv2d",)

    def __init__(self, model: nn.Module, config_list: list[dict], optimizer: torch.optim.Optimizer | None,
                 trainer: Callable[..., Any] | None, criterion: Callable[..., Tensor] | None,
                 sparsifying_training_batches: int = 1, dependency_aware: bool = False, dummy_input: Any = None,
                 global_sort: bool = False) -> None:
        self.pools_layers = global_sort
        super().__init__(model, config_list, optimizer, trainer, criterion, _scorer("taylorfo",
                         sparsifying_training_batches), 1, dependency_aware, dummy_input)


class _ActivationRankPruner(_TrainingPruner):
    """1.x's activation-statistics filter pruners (the leaves name the statistic)."""

    op_types = ("Conv2d",)
    _algorithm = ""

    def __init__(self, model: nn.Module, config_list: list[dict], optimizer: torch.optim.Optimizer | None,
                 trainer: Callable[..., Any] | None, criterion: Callable[..., Tensor] | None,
                 activation: str = "relu", sparsifying_training_batches: int = 1, dependency_aware: bool = False,
                 dummy_input: Any = None) -> None:
        super().__init__(model, config_list, optimizer, trainer, criterion,
                         _scorer(self._algorithm, sparsifying_training_batches, activation), 1, dependency_aware,
                         dummy_input)
        self.patch_optimizer(self.update_mask)  # 1.x: the masks are set after the first steps that see enough


class ActivationAPoZRankFilterPruner(_ActivationRankPruner):
    """Conv filters whose outputs are most often zero after ``activation`` (:func:`purecompress.apoz`)."""

    _algorithm = "apoz"


class ActivationMeanRankFilterPruner(_ActivationRankPruner):
    """Conv filters with the smallest mean activation (:func:`purecompress.mean_activation`)."""

    _algorithm = "mean_activation"


class AGPPruner(_TrainingPruner):
    """Automated gradual pruning (1.x): one training epoch per step, the masks recomputed every
    ``epochs_per_iteration`` epochs at :func:`purecompress.agp_schedule`'s sparsity, with the
    scorer of ``pruning_algorithm`` ('level', 'l1', 'l2', 'fpgm', 'taylorfo', 'apoz', 'mean_activation')."""

    supports_dependency_aware = False
    zero_sparsity = True

    def __init__(self, model: nn.Module, config_list: list[dict], optimizer: torch.optim.Optimizer,
                 trainer: Callable[..., Any], criterion: Callable[..., Tensor], num_iterations: int = 10,
                 epochs_per_iteration: int = 1, pruning_algorithm: str = "level") -> None:
        self.op_types = None if pruning_algorithm == "level" else ("Conv2d",)
        self.validate_config(model, config_list)  # a bad config is reported first, as 1.x does
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError("AGPPruner is iterative: pass the model's torch.optim.Optimizer")
        if num_iterations < 1 or epochs_per_iteration < 1:
            raise ValueError("num_iterations and epochs_per_iteration must be >= 1")
        scorer = _scorer(pruning_algorithm)
        super().__init__(model, config_list, optimizer, trainer, criterion, scorer)
        self.now_epoch, self.freq = 0, epochs_per_iteration
        self.end_epoch = epochs_per_iteration * num_iterations
        self.target_sparsity = 0.0

    def compute_target_sparsity(self, config: Mapping[str, Any]) -> float:
        """The sparsity at :attr:`now_epoch` for ``config``'s final ``sparsity`` (cubic AGP schedule)."""
        final = float(config.get("sparsity", 0.0))
        if final <= 0 or self.end_epoch == 1 or self.end_epoch <= self.now_epoch:
            self.target_sparsity = final
        else:
            span = ((self.end_epoch - 1) // self.freq) * self.freq
            self.target_sparsity = agp_schedule(self.now_epoch, final, end=span)
        return self.target_sparsity

    def calc_mask(self, wrapper: PrunerModuleWrapper, wrapper_idx: int | None = None) -> NniMaskDict | None:
        del wrapper_idx
        if wrapper.if_calculated or self.now_epoch % self.freq:
            return None
        masks = self._mask_for(wrapper, self.compute_target_sparsity(wrapper.config))
        if masks is not None:
            wrapper.if_calculated = True
        return masks

    def update_epoch(self, epoch: int) -> None:
        """Move to ``epoch``: the next :meth:`update_mask` recomputes the masks."""
        if epoch > 0:
            self.now_epoch = epoch
            self.set_wrappers_attribute("if_calculated", False)

    def compress(self) -> nn.Module:
        training = self.bound_model.training
        self.bound_model.train()
        for epoch in range(self.end_epoch):
            self.update_epoch(epoch)
            self.trainer(self.bound_model, optimizer=self.optimizer, criterion=self.criterion,  # type: ignore[misc]
                         epoch=epoch)
            if isinstance(self.scorer, _TaylorScorer):
                self.scorer.steps = max(self.scorer.steps, self.scorer.batches)
            self.update_mask()
        self.bound_model.train(training)
        return self.bound_model

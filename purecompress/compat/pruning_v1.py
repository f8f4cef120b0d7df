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
:func:`~purecompress.allocate_dependency_aware`).

The 1.x search pruners adapt the call pattern only: ``NetAdaptPruner`` runs :func:`purecompress.search.netadapt`,
``SimulatedAnnealingPruner`` :func:`purecompress.search.anneal_sparsities`, ``ADMMPruner`` the
:func:`purecompress.admm` transform, and ``AutoCompressPruner`` (1.x's own loop: annealing, ADMM, then
``ModelSpeedup``, ``num_iterations`` times) these two pruners. The other 1.x names (Sensitivity, AMC,
lottery ticket, transformer heads) raise an error that names their NNI 2.x counterpart, or says there
is none.
"""

from __future__ import annotations

import abc
import copy
import csv
import json
import logging
import math
import os
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from purecompress.compat.schema import EXCLUDE, NORMAL, SchemaError, schema_errors, validate
from purecompress.compat.speedup import ModelSpeedup
from purecompress.graph import channel_dependency, group_dependency
from purecompress.pruning import (
    ActivationStats,
    Mask,
    Masks,
    Metric,
    TaylorStats,
    admm,
    admm_masks,
    admm_penalty,
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
    params_of,
    slim_penalty_grad,
    taylor_accumulate,
    taylor_fo,
)
from purecompress.search import NetAdaptResult, anneal_sparsities, netadapt
from purecompress.selectors import ConfigError, select

__all__ = [
    "ADMMPruner",
    "AGPPruner",
    "ActivationAPoZRankFilterPruner",
    "ActivationMeanRankFilterPruner",
    "AutoCompressPruner",
    "DependencyAwarePruner",
    "FPGMPruner",
    "L1FilterPruner",
    "L2FilterPruner",
    "LevelPruner",
    "NOT_PROVIDED",
    "NetAdaptPruner",
    "SimulatedAnnealingPruner",
    "SlimPruner",
    "TaylorFOWeightFilterPruner",
    "WeightMasker",
    # 1.x names that raise the error naming their 2.x counterpart:
    "AMCPruner",
    "LotteryTicketPruner",
    "SensitivityPruner",
    "TransformerHeadPruner",
]

_logger = logging.getLogger(__name__)

_V2 = "nni.compression.pytorch.pruning"
#: The NNI 1.x pruner names not provided, and why (their NNI 2.x counterpart, or none).
NOT_PROVIDED: dict[str, str] = {
    "AMCPruner": f"use the 2.x {_V2}.AMCPruner(total_episode, dummy_input, pruning_algorithm, ...)",
    "LotteryTicketPruner": f"use the 2.x {_V2}.LotteryTicketPruner(model, config_list, pruning_algorithm, ...)",
    "SensitivityPruner": "NNI 2.x has no counterpart of it; see nni.compression.pytorch.utils.SensitivityAnalysis",
    "TransformerHeadPruner": ("NNI 2.x has no counterpart of it; purecompress prunes heads in its core: "
                              "pc.head_blocks, pc.head_scores, pc.allocate_heads, pc.head_masks, pc.shrink"),
}


def _not_provided(name: str) -> type:
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        del self, args, kwargs
        raise NotImplementedError(f"NNI 1.x's {name} is not provided by purecompress: {NOT_PROVIDED[name]}")

    doc = f"NNI 1.x's ``{name}``, not provided: constructing it raises NotImplementedError ({NOT_PROVIDED[name]})."
    return type(name, (), {"__init__": __init__, "__doc__": doc, "__module__": __name__})


AMCPruner = _not_provided("AMCPruner")
LotteryTicketPruner = _not_provided("LotteryTicketPruner")
SensitivityPruner = _not_provided("SensitivityPruner")
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


# The 1.x search pruners: each adapts 1.x's call pattern to one core search ------------------------

#: 1.x's ``base_algo``: the base pruner (candidate masks, as NNI's ``PRUNER_DICT``) and its core metric.
_BASE_PRUNERS: dict[str, Callable[[nn.Module, list[dict]], _MaskingPruner]] = {
    "level": LevelPruner, "l1": L1FilterPruner, "l2": L2FilterPruner, "fpgm": FPGMPruner}
_BASE_METRICS: dict[str, Callable[[Mapping[str, Tensor], list[str]], Mapping[str, Metric]]] = {
    "level": level, "l1": l1_norm, "l2": l2_norm, "fpgm": fpgm}


def _check_base_algo(base_algo: str) -> tuple[str, ...] | None:
    """The op types ``base_algo`` may select (None: any), or ValueError."""
    if base_algo not in _BASE_PRUNERS:
        raise ValueError(f"base_algo must be one of 'level', 'l1', 'l2', 'fpgm', got {base_algo!r}")
    return None if base_algo == "level" else ("Conv2d",)


def _maximize(optimize_mode: Any) -> bool:
    """``optimize_mode`` ('maximize' / 'minimize', or NNI's ``OptimizeMode``) as a flag."""
    value = getattr(optimize_mode, "value", optimize_mode)
    if value not in ("maximize", "minimize"):
        raise ValueError(f"optimize_mode must be 'maximize' or 'minimize', got {optimize_mode!r}")
    return value == "maximize"


def _base_config(base_algo: str, name: str, sparsity: float) -> dict[str, Any]:
    """One entry of the config list 1.x generates for its base pruner."""
    if base_algo == "level":
        return {"sparsity": sparsity, "op_names": [name]}
    return {"sparsity": sparsity, "op_types": ["Conv2d"], "op_names": [name]}


def _overall_sparsity(config_list: list[dict]) -> float:
    if not config_list or "sparsity" not in config_list[0]:
        raise ConfigError(0, "sparsity", "the first entry must give the overall sparsity to search for")
    return float(config_list[0]["sparsity"])


def _replace(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)


def _load_params(model: nn.Module, params: Mapping[str, Tensor]) -> None:
    """Copy ``params`` (:func:`purecompress.params_of` names) into ``model``; a tied alias that
    ``params_of`` leaves out is not loaded (it would overwrite the new values with old ones)."""
    state = model.state_dict()
    missing = [k for k in params if k not in state]
    if missing:
        raise KeyError(f"not in the model's state_dict: {missing}")
    model.load_state_dict(dict(params), strict=False)


def _write_result(directory: str | os.PathLike[str], performance: float | None, config_list: list[dict]) -> None:
    """NNI's ``search_result.json``: the score and the config list found (as a JSON string)."""
    with open(os.path.join(directory, "search_result.json"), "w") as file:
        json.dump({"performance": performance, "config_list": json.dumps(config_list)}, file)


class _SearchPruner(Pruner):
    """A 1.x pruner that searches per-layer sparsities with a base pruner (abstract): wraps the
    model at once, with dense masks until :meth:`compress` sets the masks found.

    Args:
        model, config_list: see :class:`Pruner`; ``config_list[0]['sparsity']`` is the overall target.
        base_algo: the base pruner of every candidate: 'level', 'l1', 'l2' or 'fpgm'.
        optimize_mode: 'maximize' or 'minimize' the evaluator's value.
        experiment_data_dir: where the search's files go (created if missing).
    """

    def __init__(self, model: nn.Module, config_list: list[dict], base_algo: str, optimize_mode: Any,
                 experiment_data_dir: str | os.PathLike[str]) -> None:
        self.op_types = _check_base_algo(base_algo)
        self.base_algo, self.maximize = base_algo, _maximize(optimize_mode)
        self.origin = copy.deepcopy(model)  # 1.x: the unwrapped model every candidate starts from
        super().__init__(model, config_list)
        with schema_errors():
            self.sparsity = _overall_sparsity(config_list)
            if not self.modules_wrapper:
                raise ConfigError(0, "op_types", "selects no module of the model: there is nothing to search over")
        self.experiment_data_dir = experiment_data_dir
        os.makedirs(experiment_data_dir, exist_ok=True)

    def calc_mask(self, wrapper: PrunerModuleWrapper, wrapper_idx: int | None = None) -> NniMaskDict | None:
        """None: the masks are set by :meth:`compress`."""
        del wrapper, wrapper_idx
        return None

    def _set_masks(self, masks: Mapping[str, NniMaskDict]) -> None:
        """Load ``{module: {'weight_mask', 'bias_mask'}}`` into the wrappers it names."""
        for w in self.modules_wrapper:
            if w.name in masks:
                self._load(w, {k: None if v is None else v.to(w.weight_mask.device) for k, v in masks[w.name].items()
                               if k == "weight_mask" or w.bias_mask is not None})

    def _base_pruner(self, config_list: list[dict]) -> _MaskingPruner:
        """The base pruner of ``config_list`` on a fresh copy of the original model, masks computed."""
        pruner = _BASE_PRUNERS[self.base_algo](copy.deepcopy(self.origin), config_list)
        pruner.compress()
        return pruner


class NetAdaptPruner(_SearchPruner):
    """NNI 1.x's NetAdapt: prune the layer whose candidate scores best, one weight budget per
    iteration (:func:`purecompress.search.netadapt`), until ``config_list[0]['sparsity']``.

    Each candidate is the original model copied, with the weights the last chosen candidate left
    and the base algorithm's masks on 1.x wrappers; ``short_term_fine_tuner(model)`` fine-tunes it
    and ``evaluator(model)`` scores it. ``compress()`` loads the last chosen candidate's weights and
    each chosen layer's masks into the model, writes ``search_result.json`` (score and generated
    config list) to ``experiment_data_dir``, and returns the model. Where no layer can remove the
    budget, the budget halves (NNI loops forever there).

    Args:
        model, config_list: see :class:`Pruner` (sparsity: the overall target).
        short_term_fine_tuner: ``fn(model)``; None: no fine-tuning.
        evaluator: ``fn(model) -> float``.
        optimize_mode, base_algo, experiment_data_dir: see :class:`_SearchPruner`.
        sparsity_per_iteration: the fraction of all Conv2d/Linear weights each iteration removes.

    Attributes:
        result: the :class:`~purecompress.search.NetAdaptResult` of the last :meth:`compress`.
    """

    def __init__(self, model: nn.Module, config_list: list[dict], short_term_fine_tuner: Callable[[nn.Module], Any]
                 | None, evaluator: Callable[[nn.Module], float], optimize_mode: str = "maximize",
                 base_algo: str = "l1", sparsity_per_iteration: float = 0.05,
                 experiment_data_dir: str | os.PathLike[str] = "./") -> None:
        if not callable(evaluator):
            raise TypeError("NetAdaptPruner needs evaluator(model) -> float")
        if not 0 < sparsity_per_iteration < 1:
            raise ValueError(f"sparsity_per_iteration must be in (0, 1), got {sparsity_per_iteration}")
        super().__init__(model, config_list, base_algo, optimize_mode, experiment_data_dir)
        self.short_term_fine_tuner, self.evaluator = short_term_fine_tuner, evaluator
        self.sparsity_per_iteration = sparsity_per_iteration
        self.result: NetAdaptResult | None = None
        self._tuned: tuple[Masks, nn.Module] | None = None

    def _candidate(self, params: Mapping[str, Tensor], masks: Masks) -> tuple[nn.Module, dict[str, nn.Module]]:
        """The original model copied with ``params`` and ``masks`` on 1.x wrappers; its unwrapped modules."""
        model = copy.deepcopy(self.origin)
        _load_params(model, params)
        modules = dict(model.named_modules())
        for key, mask in masks.items():
            if not key.endswith(".weight"):
                continue
            name = key[: -len(".weight")]
            module = modules[name]
            wrapper = PrunerModuleWrapper(module, name, type(module).__name__,
                                          _base_config(self.base_algo, name, mask.sparsity()), self)
            wrapper.weight_mask = mask.to_dense(wrapper.weight_mask.dtype).to(wrapper.weight_mask.device)
            bias = masks.get(f"{name}.bias")
            if bias is not None and wrapper.bias_mask is not None:
                wrapper.bias_mask = bias.to_dense(wrapper.bias_mask.dtype).to(wrapper.bias_mask.device)
            _replace(model, name, wrapper)
        return model, modules

    def _fine_tune(self, params: dict[str, Tensor], masks: Masks) -> dict[str, Tensor]:
        assert self.short_term_fine_tuner is not None
        model, modules = self._candidate(params, masks)
        self.short_term_fine_tuner(model)
        self._tuned = (masks, model)
        out = {}
        for prefix, module in modules.items():  # through the original modules: the names without wrappers
            tensors = [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]
            out.update((f"{prefix}.{n}" if prefix else n, t.detach()) for n, t in tensors)
        return out

    def _evaluate(self, params: dict[str, Tensor], masks: Masks) -> float:
        tuned, self._tuned = self._tuned, None
        model = tuned[1] if tuned is not None and tuned[0] is masks else self._candidate(params, masks)[0]
        return float(self.evaluator(model))

    def compress(self) -> nn.Module:
        """Run the search; set the masks found; returns the (wrapped) model."""
        targets = [f"{w.name}.weight" for w in self.modules_wrapper]
        # the counted layers: NNI's Conv2d and Linear, and the targets (NNI divides by zero on others)
        chain = [f"{n}.weight" for n, m in self.origin.named_modules()
                 if type(m).__name__ in ("Conv2d", "Linear") or f"{n}.weight" in targets]
        self.result = netadapt(params_of(self.origin), targets, self.sparsity, evaluate=self._evaluate,
                               fine_tune=None if self.short_term_fine_tuner is None else self._fine_tune,
                               metric=_BASE_METRICS[self.base_algo], chain=chain, step=self.sparsity_per_iteration,
                               maximize=self.maximize, biases=self.base_algo != "level")
        self._unwrap_model()
        try:
            _load_params(self.bound_model, self.result.params)
        finally:
            self._wrap_model()
        found = {}
        for w in self.modules_wrapper:
            weight, bias = self.result.masks.get(f"{w.name}.weight"), self.result.masks.get(f"{w.name}.bias")
            if weight is not None:
                found[w.name] = {"weight_mask": weight.to_dense(w.weight_mask.dtype),
                                 "bias_mask": None if bias is None else bias.to_dense(w.weight_mask.dtype)}
        self._set_masks(found)
        config_list = [_base_config(self.base_algo, name[: -len(".weight")], s)
                       for name, s in self.result.sparsities.items()]
        _write_result(self.experiment_data_dir, self.result.score, config_list)
        _logger.info("NetAdapt: %s, score %s", config_list, self.result.score)
        return self.bound_model


class SimulatedAnnealingPruner(_SearchPruner):
    """NNI 1.x's simulated annealing over per-layer sparsities meeting ``config_list[0]['sparsity']``
    of the selected layers' weights (:func:`purecompress.search.anneal_sparsities`; larger layers
    get the larger sparsities).

    Each candidate is the base pruner (``base_algo``) on a copy of the original model at the
    candidate's sparsities, scored by ``evaluator(model)``. ``compress()`` sets the best
    candidate's masks on this model's wrappers (NNI swaps in the candidate's model instead; here
    the model you hold is the one pruned) and writes ``search_history.csv`` and
    ``search_result.json`` to ``experiment_data_dir``. The draws come from ``random.Random`` seeded
    from numpy's global generator, so ``np.random.seed`` makes a run repeatable, as in NNI; the
    first candidate is drawn as the 2.x search does and is scored too.

    Args:
        model, config_list, base_algo, optimize_mode, experiment_data_dir: see :class:`_SearchPruner`.
        evaluator: ``fn(model) -> float``.
        start_temperature, stop_temperature, cool_down_rate, perturbation_magnitude: NNI's schedule.
    """

    def __init__(self, model: nn.Module, config_list: list[dict], evaluator: Callable[[nn.Module], float],
                 optimize_mode: str = "maximize", base_algo: str = "l1", start_temperature: float = 100,
                 stop_temperature: float = 20, cool_down_rate: float = 0.9, perturbation_magnitude: float = 0.35,
                 experiment_data_dir: str | os.PathLike[str] = "./") -> None:
        if not callable(evaluator):
            raise TypeError("SimulatedAnnealingPruner needs evaluator(model) -> float")
        super().__init__(model, config_list, base_algo, optimize_mode, experiment_data_dir)
        self.evaluator = evaluator
        self.options = {"start_temperature": float(start_temperature), "stop_temperature": float(stop_temperature),
                        "cool_down_rate": float(cool_down_rate),
                        "perturbation_magnitude": float(perturbation_magnitude)}
        self.search_history: list[dict[str, Any]] = []

    def _config_list(self, sparsities: Mapping[str, float]) -> list[dict]:
        # 1.x drops the layers whose sparsity is (about) 0
        return [_base_config(self.base_algo, name, s) for name, s in sparsities.items()
                if not math.isclose(s, 0, abs_tol=1e-6)]

    def _evaluate(self, sparsities: dict[str, float]) -> float:
        config_list = self._config_list(sparsities)
        value = float(self.evaluator(self._base_pruner(config_list).bound_model))
        self.search_history.append({"sparsity": self.sparsity, "performance": value, "config_list": config_list})
        return value if self.maximize else -value

    def compress(self, return_config_list: bool = False) -> nn.Module | list[dict]:  # type: ignore[override]

        """Run the search; set the best masks (or, with ``return_config_list``, return its config list)."""
        sizes = {w.name: w.module.weight.numel() for w in self.modules_wrapper}
        self.search_history = []
        seed = int(np.random.randint(2**31 - 1))
        result = anneal_sparsities(self._evaluate, sizes, self.sparsity, seed=seed, **self.options)
        best = self._config_list(result.sparsities)
        with open(os.path.join(self.experiment_data_dir, "search_history.csv"), "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=["sparsity", "performance", "config_list"])
            writer.writeheader()
            for item in self.search_history:
                writer.writerow({**item, "config_list": json.dumps(item["config_list"])})
        _write_result(self.experiment_data_dir, result.score if self.maximize else -result.score, best)
        if return_config_list:
            return best
        pruner = self._base_pruner(best)
        self._set_masks({w.name: {"weight_mask": w.weight_mask, "bias_mask": w.bias_mask}
                         for w in pruner.get_modules_wrapper()})
        return self.bound_model


class ADMMPruner(Pruner):
    """NNI 1.x's ADMM pruner: ``num_iterations`` rounds of ``epochs_per_iteration`` epochs of
    ``trainer``, each followed by one projection of :func:`purecompress.admm` (with ``base_algo``'s
    metric); before every optimizer step the weights move by ``-row * (W - Z + U)`` (the gradient of
    :func:`purecompress.admm_penalty`, as 1.x applies it). ``compress()`` then sets the masks of the
    trained weights (:func:`purecompress.admm_masks`). 1.x trains with its own
    ``Adam(lr=1e-3, weight_decay=5e-5)``, handed to ``trainer`` as ``optimizer``; so does this.

    Unlike 1.x, ``Z`` starts as a copy of the weights: 1.x's ``Z`` is the weight tensor itself
    until the first projection, so its first round trains without the penalty.

    Args:
        model, config_list: see :class:`Pruner` (each entry's sparsity is its layers' projection).
        trainer: ``fn(model, optimizer=, criterion=, epoch=)``.
        criterion: the loss handed to ``trainer`` (default ``nn.CrossEntropyLoss()``).
        num_iterations, epochs_per_iteration, row: ADMM's rounds, epochs per round and penalty.
        base_algo: 'level' (fine-grained) or 'l1' / 'l2' / 'fpgm' (filters).
    """

    def __init__(self, model: nn.Module, config_list: list[dict], trainer: Callable[..., Any],
                 criterion: Callable[..., Tensor] | None = None, num_iterations: int = 30,
                 epochs_per_iteration: int = 5, row: float = 1e-4, base_algo: str = "l1") -> None:
        self.op_types = _check_base_algo(base_algo)
        super().__init__(model, config_list)
        if trainer is None:
            raise ValueError("ADMMPruner trains: pass trainer(model, optimizer, criterion, epoch)")
        if num_iterations < 1 or epochs_per_iteration < 0:
            raise ValueError("num_iterations must be >= 1 and epochs_per_iteration >= 0")
        self.trainer, self.criterion = trainer, criterion if criterion is not None else nn.CrossEntropyLoss()
        self.num_iterations, self.epochs_per_iteration, self.row = num_iterations, epochs_per_iteration, row
        self.base_algo = base_algo
        self.optimizer = torch.optim.Adam(self.bound_model.parameters(), lr=1e-3, weight_decay=5e-5)
        sparsities = {}
        for w in self.modules_wrapper:
            if "sparsity" not in w.config:
                raise ConfigError(None, "sparsity", f"module {w.name!r} was selected by a config without a sparsity")
            sparsities[f"{w.name}.weight"] = float(w.config["sparsity"])
        self.transform = admm(list(sparsities), sparsities, rho=row, metric=_BASE_METRICS[base_algo])
        self.state: Any = None
        self.set_wrappers_attribute("if_calculated", False)
        self.patch_optimizer_before(self._callback)

    def _weights(self) -> dict[str, Tensor]:
        return {f"{w.name}.weight": w.module.weight for w in self.modules_wrapper}

    def _callback(self) -> None:
        if self.state is None:
            return
        weights = self._weights()
        step = torch.func.grad(lambda p: admm_penalty(p, self.state))({n: t.detach() for n, t in weights.items()})
        with torch.no_grad():
            for name, weight in weights.items():
                weight.sub_(step[name])

    def calc_mask(self, wrapper: PrunerModuleWrapper, wrapper_idx: int | None = None) -> NniMaskDict | None:
        """None: the masks are set by :meth:`compress`."""
        del wrapper, wrapper_idx
        return None

    def compress(self) -> nn.Module:
        """Train with the ADMM penalty, project after every round, then set the masks."""
        weights = {n: t.detach() for n, t in self._weights().items()}
        self.state = self.transform.init(weights)
        for _ in range(self.num_iterations):
            for epoch in range(self.epochs_per_iteration):
                self.trainer(self.bound_model, optimizer=self.optimizer, criterion=self.criterion, epoch=epoch)
            _, self.state = self.transform.update({n: t.detach() for n, t in self._weights().items()}, self.state)
        weights = {n: t.detach() for n, t in self._weights().items()}
        masks = admm_masks(weights, self.state)
        if self.base_algo != "level":
            masks = bias_masks(masks, {f"{w.name}.bias": tuple(w.module.bias.shape) for w in self.modules_wrapper
                                       if getattr(w.module, "bias", None) is not None})
        for w in self.modules_wrapper:
            bias = masks.get(f"{w.name}.bias")
            self._load(w, {"weight_mask": masks[f"{w.name}.weight"].to_dense(w.weight_mask.dtype).to(
                w.weight_mask.device), "bias_mask": None if bias is None or w.bias_mask is None else
                bias.to_dense(w.bias_mask.dtype).to(w.bias_mask.device)})
            w.if_calculated = True
        return self.bound_model


class AutoCompressPruner:
    """NNI 1.x's AutoCompress: ``num_iterations`` rounds, each prunes ``1 - (1 - s)**(1/n)`` of the
    Conv2d weights: :class:`SimulatedAnnealingPruner` picks the layer sparsities, :class:`ADMMPruner`
    prunes with them, and :class:`~purecompress.compat.ModelSpeedup` shrinks the model in place.

    As in 1.x the model is not wrapped: ``compress()`` returns the shrunk model (the same object)
    and ``export_model`` saves its ``state_dict`` (no masks: it is compact). The round's files
    (``model_admm_masked.pth``, ``mask.pth``, the annealing's ``search_*``) go to
    ``experiment_data_dir``; the first two are removed at the end.

    Args:
        model, config_list: the model and 1.x configs (``config_list[0]['sparsity']`` the overall target).
        trainer, criterion, evaluator: see :class:`ADMMPruner` and :class:`SimulatedAnnealingPruner`.
        dummy_input: example input for the speedup.
        num_iterations, optimize_mode, base_algo: rounds, and as in :class:`SimulatedAnnealingPruner`.
        start_temperature, stop_temperature, cool_down_rate, perturbation_magnitude: the annealing's.
        admm_num_iterations, admm_epochs_per_iteration, row: the ADMM pruner's.
    """

    def __init__(self, model: nn.Module, config_list: list[dict], trainer: Callable[..., Any],
                 evaluator: Callable[[nn.Module], float], dummy_input: Any,
                 criterion: Callable[..., Tensor] | None = None, num_iterations: int = 3,
                 optimize_mode: str = "maximize", base_algo: str = "l1", start_temperature: float = 100,
                 stop_temperature: float = 20, cool_down_rate: float = 0.9, perturbation_magnitude: float = 0.35,
                 admm_num_iterations: int = 30, admm_epochs_per_iteration: int = 5, row: float = 1e-4,
                 experiment_data_dir: str | os.PathLike[str] = "./") -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"Only a torch.nn.Module can be pruned, got {type(model).__name__}")
        with schema_errors():  # 1.x never checks its config; a bad one fails here, not rounds later
            validate(config_list, forms=(NORMAL, EXCLUDE), op_types=_check_base_algo(base_algo))
            self.sparsity = _overall_sparsity(config_list)
        _maximize(optimize_mode)
        if num_iterations < 1:
            raise ValueError(f"num_iterations must be >= 1, got {num_iterations}")
        self.bound_model, self.config_list = model, config_list
        self.trainer, self.criterion, self.evaluator, self.dummy_input = trainer, criterion, evaluator, dummy_input
        self.num_iterations, self.optimize_mode, self.base_algo = num_iterations, optimize_mode, base_algo
        self.sa_options = {"start_temperature": start_temperature, "stop_temperature": stop_temperature,
                           "cool_down_rate": cool_down_rate, "perturbation_magnitude": perturbation_magnitude}
        self.admm_options = {"num_iterations": admm_num_iterations, "epochs_per_iteration": admm_epochs_per_iteration,
                             "row": row}
        self.experiment_data_dir = experiment_data_dir
        os.makedirs(experiment_data_dir, exist_ok=True)

    def compress(self) -> nn.Module:
        """The rounds; returns the shrunk model."""
        each = 1 - (1 - self.sparsity) ** (1 / self.num_iterations)
        model_path = os.path.join(self.experiment_data_dir, "model_admm_masked.pth")
        mask_path = os.path.join(self.experiment_data_dir, "mask.pth")
        for i in range(self.num_iterations):
            round_config = [{"sparsity": each, "op_types": ["Conv2d"]}]
            search = SimulatedAnnealingPruner(copy.deepcopy(self.bound_model), round_config, self.evaluator,
                                              self.optimize_mode, self.base_algo,
                                              experiment_data_dir=self.experiment_data_dir, **self.sa_options)
            config_list = search.compress(return_config_list=True)
            assert isinstance(config_list, list)
            pruner = ADMMPruner(copy.deepcopy(self.bound_model), config_list, self.trainer, self.criterion,
                                base_algo=self.base_algo, **self.admm_options)  # type: ignore[arg-type]
            pruner.compress()
            pruner.export_model(model_path, mask_path)
            self.bound_model.load_state_dict(torch.load(model_path, weights_only=True))
            device = next(self.bound_model.parameters()).device
            ModelSpeedup(self.bound_model, self.dummy_input, mask_path, device).speedup_model()
            score = self.evaluator(self.bound_model)  # 1.x scores every round's shrunk model
            _logger.info("AutoCompress round %d: %s, score %s", i, config_list, score)
        os.remove(model_path)
        os.remove(mask_path)
        return self.bound_model

    def export_model(self, model_path: str | os.PathLike[str], mask_path: str | os.PathLike[str] | None = None,
                     onnx_path: str | os.PathLike[str] | None = None, input_shape: Sequence[int] | None = None,
                     device: torch.device | None = None) -> None:
        """Save the (compact) model's ``state_dict``, and optionally ONNX; ``mask_path`` is unused (1.x)."""
        del mask_path
        torch.save(self.bound_model.state_dict(), model_path)
        if onnx_path is not None:
            if input_shape is None:
                raise ValueError("input_shape must be given to export an ONNX model")
            x = torch.zeros(*input_shape, device=device or "cpu")
            torch.onnx.export(self.bound_model, (x,), onnx_path, dynamo=False)

"""The base of every NNI 2.x pruner: :class:`Pruner` (binds a model, wraps the configured modules,
loads masks, exports) and :class:`PrunerModuleWrapper` (the module wrapper NNI scripts reach
through ``get_modules_wrapper()``).

The wrapper keeps NNI's names and buffers (``weight`` moves to the wrapper so ``conv1.weight``
keeps its name; ``weight_mask``/``bias_mask`` buffers); every mask it holds comes from the core as a
:class:`~purecompress.Mask`. Config errors are :class:`purecompress.compat.SchemaError`: a
:class:`~purecompress.ConfigError` that is also NNI's ``schema.SchemaError``.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import torch
from torch import Tensor, nn

from purecompress.compat.schema import Form, schema_errors, validate
from purecompress.compat.utils import canonical_from, get_module_by_name
from purecompress.pruning import Mask, Masks, channel_keep, output_mask, simplify_mask
from purecompress.selectors import ConfigError, select

__all__ = [
    "NniMasks",
    "Pruner",
    "PrunerModuleWrapper",
    "TARGETS",
    "Target",
    "sparsities",
]


TARGETS = ("weight", "bias")



@attrs.frozen
class Target:
    """One weight to prune, as an allocator receives it.

    Attributes:
        shape: the weight's shape.
        sparsity: the fraction to prune (NNI's canonical ``total_sparsity``).
        cap: ``max_sparsity_per_layer`` in global allocation (default 0.99, NNI's).
        bias: the shape of the module's bias (None without one), for NNI's bias masks.
    """

    shape: tuple[int, ...] = attrs.field(converter=tuple)
    sparsity: float
    cap: float = 0.99
    bias: tuple[int, ...] | None = None



def sparsities(targets: Mapping[str, Target]) -> dict[str, float]:
    """``{name: target.sparsity}``.

    >>> sparsities({'fc.weight': Target((2, 3), 0.5)})
    {'fc.weight': 0.5}
    """
    return {name: target.sparsity for name, target in targets.items()}



@attrs.frozen
class _Factors:
    """How the forward applies the masks.

    Attributes:
        params: target -> compact factor to multiply it by (absent: dense, no work).
        output: a factor for the module's output instead (``nn.Linear`` with a row mask, see
            :func:`purecompress.output_mask`).
        records: target -> the (simplified) core mask; absent: dense.
    """

    params: dict[str, Tensor]
    output: Tensor | None = None
    records: dict[str, Mask] = attrs.field(factory=dict)



def _plan(module: nn.Module, records: dict[str, Mask], bias: tuple[int, ...] | None, dtype: torch.dtype,
          device: torch.device) -> _Factors:
    if type(module) is nn.Linear:
        # A dense bias is a mask too: masking the output would zero the bias of pruned rows.
        dense_bias = None if bias is None else Mask.dense(bias)
        row = output_mask(records.get("weight"), records.get("bias", dense_bias))
        if row is not None:
            return _Factors({}, row.to(dtype=dtype, device=device), records)
    factors = {t: m.broadcastable().to(dtype=dtype, device=device) for t, m in records.items()}
    return _Factors(factors, None, records)



class PrunerModuleWrapper(nn.Module):
    """Wraps ``module`` so its ``weight`` (and ``bias``) are multiplied by masks in every forward.

    Args:
        module: the module to prune (must have a ``weight``).
        module_name: its qualified name in the model; the wrapper takes its place.
        config: the canonical config that selected it, e.g. ``{'op_names': [name], 'total_sparsity': 0.5}``.

    Attributes:
        weight, bias: the module's Parameters (moved here while wrapped).
        weight_mask, bias_mask: float 0/1 buffers of the targets' shapes (``bias_mask`` None without bias).
    """

    def __init__(self, module: nn.Module, module_name: str, config: Mapping[str, Any]) -> None:
        super().__init__()
        if not isinstance(getattr(module, "weight", None), Tensor):
            raise ValueError(f"module {module_name!r} ({type(module).__name__}) has no 'weight' tensor to prune")
        for target in TARGETS:
            if isinstance(getattr(module, target, None), Tensor) and target not in module._parameters:
                raise ValueError(f"{module_name}.{target} is not a Parameter of the module (is it wrapped already?)")
        self.module = module
        self.name = module_name
        self.config = dict(config)
        self._order = list(module._parameters)
        # target -> (the buffer derived from a core mask, its version, the mask): the forward uses the
        # record while the buffer is that tensor, unedited; a buffer a script replaced or edited
        # in place is read back once (Mask.from_dense) instead.
        self._records: dict[str, tuple[Tensor, int, Mask]] = {}
        self._cache: tuple[tuple[Tensor | None, ...], tuple[int, ...], torch.dtype, _Factors] | None = None
        self.targets = tuple(t for t in TARGETS if isinstance(getattr(module, t, None), Tensor))
        for target in TARGETS:
            tensor = getattr(module, target, None) if target in self.targets else None
            self.register_parameter(target, module._parameters.get(target) if tensor is not None else None)
            self.register_buffer(f"{target}_mask", None if tensor is None else torch.ones_like(tensor.detach()))
        # The masks start all ones: seed the cache as dense rather than scanning them.
        masks = tuple(self._buffers[f"{t}_mask"] for t in self.targets)
        self._cache = (masks, tuple(m._version for m in masks), module.weight.dtype, _Factors({}))

    def _weight2buffer(self) -> None:
        """Move the module's Parameters here; the module keeps a buffer (NNI's layout)."""
        for target in self.targets:
            param = self._parameters[target]
            if target in self.module._parameters:
                delattr(self.module, target)
            self.module.register_buffer(target, param.detach())

    def _weight2parameter(self) -> None:
        """Give the Parameters back to the module with the masks baked into their values."""
        with torch.no_grad():
            for target in self.targets:
                param = self._parameters[target]
                mask = self._buffers[f"{target}_mask"]
                if mask is not None:
                    param.mul_(mask.to(param.device, param.dtype))
                delattr(self.module, target)
                self.module.register_parameter(target, param)
        params = self.module._parameters
        ordered = [(k, params.pop(k)) for k in self._order if k in params] + list(params.items())
        params.clear()
        params.update(ordered)

    def set_masks(self, masks: Mapping[str, Mask]) -> None:
        """Load core masks (``{'weight': Mask, 'bias': Mask}``); the float ``weight_mask``/``bias_mask``
        buffers NNI scripts read are derived from them here, the one place they are made."""
        for target, mask in masks.items():
            if target not in self.targets:
                raise KeyError(f"{self.name!r} has no {target}_mask")
            param = self._parameters[target]
            if tuple(mask.shape) != tuple(param.shape):
                raise ValueError(f"{self.name}.{target}: mask of shape {tuple(mask.shape)} for a "
                                 f"{target} of shape {tuple(param.shape)}")
            dense = mask.to_dense(param.dtype).to(param.device)
            setattr(self, f"{target}_mask", dense)
            self._records[target] = (dense, dense._version, mask)

    def _record(self, target: str, buffer: Tensor) -> Mask | None:
        made = self._records.get(target)
        mask = made[2] if made is not None and made[0] is buffer and made[1] == buffer._version \
            else Mask.from_dense(buffer)
        return simplify_mask(mask)

    def _factors(self) -> _Factors:
        """The cached compact masks, rebuilt when a mask buffer is replaced or edited in place."""
        masks = tuple(self._buffers[f"{t}_mask"] for t in self.targets)
        versions = tuple(-1 if m is None else m._version for m in masks)
        param = self._parameters["weight"]
        cached = self._cache
        # The cache holds the mask tensors themselves (not ids): a new mask is never mistaken for an old one.
        if cached is None or cached[1] != versions or cached[2] != param.dtype \
                or any(a is not b for a, b in zip(cached[0], masks)):
            records = {t: self._record(t, m) for t, m in zip(self.targets, masks) if m is not None}
            records = {t: r for t, r in records.items() if r is not None}
            bias = self._parameters["bias"] if "bias" in self.targets else None
            plan = _plan(self.module, records, None if bias is None else tuple(bias.shape), param.dtype, param.device)
            cached = (masks, versions, param.dtype, plan)
            self._cache = cached
        return cached[3]

    def mask_record(self, target: str = "weight") -> Mask | None:
        """The current mask of ``target`` as a compact core :class:`~purecompress.Mask`; None if dense."""
        return self._factors().records.get(target)

    def masked(self, target: str) -> Tensor:
        """``target`` with its mask applied (differentiable; the parameter itself if the mask is dense)."""
        mask = self.mask_record(target)
        param = self._parameters[target]
        return param if mask is None else mask.apply(param)

    def forward(self, *inputs: Any, **kwargs: Any) -> Any:
        plan = self._factors()
        buffers = self.module._buffers  # direct slot write: nn.Module.__setattr__ would re-register a Parameter
        for target in self.targets:
            factor = plan.params.get(target)
            param = self._parameters[target]
            buffers[target] = param if factor is None else param * factor
        out = self.module(*inputs, **kwargs)
        return out if plan.output is None else out * plan.output

    def extra_repr(self) -> str:
        return f"name={self.name!r}"


_logger = logging.getLogger(__name__)


NniMasks = dict[str, dict[str, Tensor | None]]
_WRAPPING = threading.RLock()



def _setattr(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _ = get_module_by_name(model, name)
    if parent is None:
        raise ValueError(f"module {name!r} does not exist in the model")
    setattr(parent, name.rpartition(".")[2], module)



class Pruner:
    """A pruner bound to ``model``; subclasses implement :meth:`reset_tools` and :meth:`compress`.

    Concrete, as NNI 2.10's base: ``Pruner(model, config_list)`` wraps the selected modules, its
    :meth:`compress` computes nothing (returns ``(model, {})``) and tools such as the sparsity
    allocators and data collectors can be bound to it. Without ``config_forms`` (this base) an entry
    may leave out the sparsity, as NNI's base takes it; an allocator asked for masks then says which
    module has none.

    Args:
        model: the model to prune (wrapped in place), or None to bind later with :meth:`reset`.
        config_list: NNI config dicts, e.g. ``[{'sparsity': 0.5, 'op_types': ['Conv2d']}]``.

    Attributes:
        bound_model: the model.
        config_list: the canonical config list (see :func:`purecompress.compat.utils.config_list_canonical`).
        modules_wrapper: ``{name: PrunerModuleWrapper}`` in ``named_modules()`` order.
        is_wrapped: whether the wrappers are in the model now.
    """

    #: The config forms the pruner accepts (None: any NNI pruning keys) and its op types.
    config_forms: Sequence[Form] | None = None
    supported_op_types: Sequence[str] | None = None

    def __init__(self, model: nn.Module | None, config_list: list[dict] | None) -> None:
        self.is_wrapped = False
        self.bound_model: nn.Module | None = None
        self.config_list: list[dict] | None = None
        self.modules_wrapper: dict[str, PrunerModuleWrapper] | None = None
        if model is not None and config_list is None:
            raise ConfigError(None, None, "a model was passed without a config_list; pass a list of dicts such as "
                              "[{'sparsity': 0.5, 'op_types': ['Conv2d']}] (or neither, and call reset() later)")
        if model is not None and config_list is not None:
            self.reset(model, config_list)

    def reset(self, model: nn.Module | None = None, config_list: list[dict] | None = None) -> None:
        """Bind ``model`` and ``config_list`` (validated), wrap the selected modules, reset the tools."""
        if not isinstance(model, nn.Module):
            raise TypeError(f"Only a torch.nn.Module can be pruned, got {type(model).__name__}")
        # _WRAPPING: two threads wrapping one model: the second sees the first's wrappers, not a torn dict
        with _WRAPPING, schema_errors():
            configs = validate(config_list, forms=self.config_forms, op_types=self.supported_op_types,
                               require_sparsity=self.config_forms is not None)
            modules = dict(model.named_modules())
            if any(isinstance(m, PrunerModuleWrapper) for m in modules.values()) and model is not self.bound_model:
                raise ValueError("the model is already wrapped by another pruner; call that pruner's _unwrap_model() "
                                 "first, or prune a copy of the model")
            plan = select(model, configs)
            if getattr(self, "mode", None) == "global":
                totals = [c.total_sparsity for c in configs if not c.selector.exclude]
                if any(t != totals[0] for t in totals) or None in totals:
                    raise ConfigError(None, "total_sparsity", "mode='global' pools every selected layer under one "
                                      f"'total_sparsity'; the entries give {totals}: use one value")
            for entry in plan:
                if not isinstance(getattr(modules[entry.module], "weight", None), Tensor):
                    raise ConfigError(entry.index, "op_types", f"module {entry.module!r} ({entry.type_name}) has no "
                                      "weight to prune; select weighted modules only (e.g. op_types ['default'])")
            self._unwrap_model()
            previous = (self.bound_model, self.config_list, self.modules_wrapper)
            try:  # all or nothing: on any exception (Ctrl-C included) the model is exactly as it was
                self.bound_model = model
                self.config_list = canonical_from(model, config_list, configs)  # type: ignore[arg-type]
                config_of = {name: config for config in self.config_list for name in config["op_names"]}
                self.modules_wrapper = {}
                for entry in plan:
                    wrapper = PrunerModuleWrapper(modules[entry.module], entry.module, config_of[entry.module])
                    self.modules_wrapper[entry.module] = wrapper.to(wrapper.weight.device)
                self._wrap_model()
                self.reset_tools()
            except BaseException:
                self._undo_wrap(model, modules)
                self.bound_model, self.config_list, self.modules_wrapper = previous
                raise

    def _undo_wrap(self, model: nn.Module, modules: dict[str, nn.Module]) -> None:
        """Put back every module and Parameter that a failed :meth:`reset` moved (no mask baked in)."""
        for wrapper in (self.modules_wrapper or {}).values():
            if self.is_wrapped or get_module_by_name(model, wrapper.name)[1] is wrapper:
                _setattr(model, wrapper.name, modules[wrapper.name])
            for target in wrapper.targets:
                param = wrapper._parameters[target]
                if target not in wrapper.module._parameters and param is not None:
                    wrapper.module._buffers.pop(target, None)
                    wrapper.module.register_parameter(target, param)
            order = wrapper.module._parameters
            ordered = [(k, order.pop(k)) for k in wrapper._order if k in order] + list(order.items())
            order.clear()
            order.update(ordered)
        self.is_wrapped = False

    def reset_tools(self) -> None:
        """Create (or reset) the tools :meth:`compress` uses (the base has none)."""

    def compress(self) -> tuple[nn.Module, NniMasks]:
        """Compute masks, load them into the wrappers; return ``(bound_model, masks)``.

        The base computes none: ``(bound_model, {})``, as NNI's base ``Pruner``.
        """
        return self._bound(), {}

    def _bound(self) -> nn.Module:
        if self.bound_model is None or self.modules_wrapper is None:
            raise RuntimeError("No model is bound to this pruner; call reset(model, config_list) first")
        return self.bound_model

    def get_modules_wrapper(self) -> dict[str, PrunerModuleWrapper]:
        """``{module name: wrapper}`` in ``named_modules()`` order."""
        self._bound()
        return self.modules_wrapper  # type: ignore[return-value]

    def _wrap_model(self) -> None:
        """Put the wrappers in the model (Parameters move into them)."""
        model = self._bound()
        if not self.is_wrapped:
            for wrapper in reversed(list(self.get_modules_wrapper().values())):
                _setattr(model, wrapper.name, wrapper)
                wrapper._weight2buffer()
            self.is_wrapped = True

    def _unwrap_model(self) -> None:
        """Put the original modules back, with the masks baked into their weights."""
        if self.bound_model is None or self.modules_wrapper is None:
            return
        if self.is_wrapped:
            for wrapper in self.get_modules_wrapper().values():
                _setattr(self.bound_model, wrapper.name, wrapper.module)
                wrapper._weight2parameter()
            self.is_wrapped = False

    def get_origin2wrapped_parameter_name_map(self) -> dict[str, str]:
        """``{original parameter name: wrapped name}``: ``X.weight``/``X.bias`` keep their names,
        other parameters of a wrapped module ``X`` become ``X.module.p``."""
        model = self._bound()
        if not self.is_wrapped:
            raise RuntimeError("The parameter name map exists only while the model is wrapped")
        prefixes = [(f"{name}.module.", f"{name}.") for name in self.get_modules_wrapper()]
        out = {}
        for name, _ in model.named_parameters():
            original = next((new + name[len(old):] for old, new in prefixes if name.startswith(old)), name)
            out[original] = name
        return out

    def load_masks(self, masks: Mapping[str, Mapping[str, Tensor | None]]) -> None:
        """Load ``{module: {'weight': mask, 'bias': mask}}`` (NNI's dense 0/1 format) into the wrappers."""
        wrappers = self.get_modules_wrapper()
        for module_name, targets in masks.items():
            if module_name not in wrappers:
                raise KeyError(f"{module_name!r} is not wrapped by this pruner; wrapped: {list(wrappers)}")
            known = wrappers[module_name].targets
            for target, mask in targets.items():
                if target not in ("weight", "bias") or (mask is not None and target not in known):
                    raise KeyError(f"{module_name!r} has no {target}_mask")
            wrappers[module_name].set_masks({t: Mask.from_dense(m) for t, m in targets.items() if m is not None})

    def load_records(self, masks: Masks) -> None:
        """Load core masks keyed ``'module.target'`` (what the core allocators return) into the wrappers."""
        wrappers = self.get_modules_wrapper()
        grouped: dict[str, dict[str, Mask]] = {}
        for name, mask in masks.items():
            module_name, _, target = name.rpartition(".")
            if module_name not in wrappers:
                raise KeyError(f"{module_name!r} is not wrapped by this pruner; wrapped: {list(wrappers)}")
            grouped.setdefault(module_name, {})[target] = mask
        for module_name, records in grouped.items():
            wrappers[module_name].set_masks(records)

    def targets(self) -> dict[str, Target]:
        """``'module.weight'`` -> :class:`Target`, read from NNI's surface: each wrapper's canonical
        ``config`` (``total_sparsity``, ``max_sparsity_per_layer``; a script may edit them) and shapes."""
        out = {}
        for name, wrapper in self.get_modules_wrapper().items():
            caps = wrapper.config.get("max_sparsity_per_layer") or {}
            bias = wrapper.bias
            if "total_sparsity" not in wrapper.config:
                raise ConfigError(None, "total_sparsity", f"module {name!r} was selected by a config without a "
                                  f"sparsity ({wrapper.config}); give its entry 'sparsity' or 'total_sparsity'")
            out[f"{name}.weight"] = Target(tuple(wrapper.weight.shape), float(wrapper.config["total_sparsity"]),
                                           float(caps.get(name, 0.99)), None if bias is None else tuple(bias.shape))
        return out

    def weight_masks(self) -> Masks:
        """The wrappers' current weight masks as core records keyed ``'module.weight'`` (dense ones left out)."""
        out = {}
        for name, wrapper in self.get_modules_wrapper().items():
            mask = wrapper.mask_record("weight")
            if mask is not None:
                out[f"{name}.weight"] = mask
        return out

    def nni_masks(self, masks: Masks) -> NniMasks:
        """NNI's ``{module: {target: mask buffer}}`` for the targets of ``masks`` (core records just
        loaded), in wrapper order: the float buffers the wrappers derived from them."""
        out: NniMasks = {}
        for name, wrapper in self.get_modules_wrapper().items():
            for target in wrapper.targets:
                if f"{name}.{target}" in masks:
                    out.setdefault(name, {})[target] = getattr(wrapper, f"{target}_mask")
        return out

    def show_pruned_weights(self, dim: int = 0) -> dict[str, tuple[int, int]]:
        """Log (and return) ``{module: (kept, total)}`` slices along ``dim`` of each weight mask."""
        out = {}
        for name, wrapper in self.get_modules_wrapper().items():
            mask = wrapper.mask_record("weight") or Mask.dense(tuple(wrapper.weight_mask.shape))
            out[name] = (int(channel_keep(mask, dim).sum()), int(wrapper.weight_mask.shape[dim]))
            _logger.info("simulated prune %s remain/total: %d/%d", name, *out[name])
        return out

    def export_model(self, model_path: str | os.PathLike[str], mask_path: str | os.PathLike[str] | None = None) -> None:
        """Save the unwrapped, masked ``state_dict`` (original keys) and optionally the mask dict.

        The mask file holds ``{module: {'weight': mask, 'bias': mask or None}}`` as NNI's does.
        """
        self._bound()
        if model_path is None:
            raise ValueError("model_path must be specified")
        self._unwrap_model()
        try:
            mask_dict = {name: {"weight": w.weight_mask, "bias": w.bias_mask}
                         for name, w in self.get_modules_wrapper().items()}
            torch.save(self.bound_model.state_dict(), model_path)  # type: ignore[union-attr]
            _logger.debug("model state_dict saved to %s", model_path)
            if mask_path is not None:
                torch.save(mask_dict, mask_path)
                _logger.debug("mask dict saved to %s", mask_path)
        finally:
            self._wrap_model()

    def generate_module_groups(self) -> dict[int, list[str]]:
        """``{index in config_list: module names}`` (of the canonical config list)."""
        return {i: list(c["op_names"]) for i, c in enumerate(self.config_list or []) if c.get("op_names")}

    def clear_model_references(self) -> None:
        """Unwrap and forget the model."""
        self._unwrap_model()
        self.bound_model = None
        self.config_list = None
        self.modules_wrapper = None

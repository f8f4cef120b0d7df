"""NNI's abstract ``Pruner``: binds a model, wraps the selected modules in place, exports.

Same as ``nni.compression.pytorch.base.Pruner`` (2.10), but selection is the core's
:func:`purecompress.select` and configs are validated into :class:`purecompress.PruneConfig`
(errors are :class:`purecompress.config.ConfigError`, not ``schema.SchemaError``).
"""

from __future__ import annotations

import abc
import logging
import os
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from purecompress.compat._schema import Form, validate
from purecompress.compat.utils import canonical_from, get_module_by_name
from purecompress.compat.wrapper import PrunerModuleWrapper
from purecompress.records import Mask
from purecompress.selection import select

__all__ = ["NniMasks", "Pruner", "PrunerModuleWrapper"]

_logger = logging.getLogger(__name__)

NniMasks = dict[str, dict[str, Tensor | None]]


def _setattr(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _ = get_module_by_name(model, name)
    if parent is None:
        raise ValueError(f"module {name!r} does not exist in the model")
    setattr(parent, name.rpartition(".")[2], module)


class Pruner(abc.ABC):
    """Abstract pruner bound to ``model``: subclasses implement :meth:`reset_tools` and :meth:`compress`.

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
        if model is not None and config_list is not None:
            self.reset(model, config_list)

    def reset(self, model: nn.Module | None = None, config_list: list[dict] | None = None) -> None:
        """Bind ``model`` and ``config_list`` (validated), wrap the selected modules, reset the tools."""
        if not isinstance(model, nn.Module):
            raise TypeError(f"Only a torch.nn.Module can be pruned, got {type(model).__name__}")
        configs = validate(config_list, forms=self.config_forms, op_types=self.supported_op_types)
        self._unwrap_model()
        self.bound_model = model
        self.config_list = canonical_from(model, config_list, configs)  # type: ignore[arg-type]
        config_of = {name: config for config in self.config_list for name in config["op_names"]}
        modules = dict(model.named_modules())
        self.modules_wrapper = {}
        for entry in select(model, configs):
            wrapper = PrunerModuleWrapper(modules[entry.module], entry.module, config_of[entry.module])
            self.modules_wrapper[entry.module] = wrapper.to(wrapper.weight.device)
        self._wrap_model()
        self.reset_tools()

    @abc.abstractmethod
    def reset_tools(self) -> None:
        """Create (or reset) the tools :meth:`compress` uses."""

    @abc.abstractmethod
    def compress(self) -> tuple[nn.Module, NniMasks]:
        """Compute masks, load them into the wrappers; return ``(bound_model, masks)``."""

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
        """Load ``{module: {'weight': mask, 'bias': mask}}`` into the wrappers (on the targets' devices)."""
        wrappers = self.get_modules_wrapper()
        for module_name, targets in masks.items():
            if module_name not in wrappers:
                raise KeyError(f"{module_name!r} is not wrapped by this pruner; wrapped: {list(wrappers)}")
            wrapper = wrappers[module_name]
            for target, mask in targets.items():
                if target not in ("weight", "bias") or (mask is not None and target not in wrapper.targets):
                    raise KeyError(f"{module_name!r} has no {target}_mask")
                if mask is None:
                    continue
                param = getattr(wrapper, target)
                if tuple(mask.shape) != tuple(param.shape):
                    raise ValueError(f"{module_name}.{target}: mask of shape {tuple(mask.shape)} for a "
                                     f"{target} of shape {tuple(param.shape)}")
                setattr(wrapper, f"{target}_mask", mask.to(param.device))

    def show_pruned_weights(self, dim: int = 0) -> dict[str, tuple[int, int]]:
        """Log (and return) ``{module: (kept, total)}`` slices along ``dim`` of each weight mask."""
        out = {}
        for name, wrapper in self.get_modules_wrapper().items():
            mask = Mask.from_dense(wrapper.weight_mask)
            keep = mask.keep if mask.keep.dim() <= 1 else \
                mask.keep.any(dim=[d for d in range(mask.keep.dim()) if d != dim])
            out[name] = (int(keep.sum()), int(wrapper.weight_mask.shape[dim]))
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

"""NNI's ``PrunerModuleWrapper``: the module the pruner puts in place of each pruned layer.

Same as NNI 2.10's wrapper (the trainable Parameter moves to ``wrapper.weight`` so
``conv1.weight`` keeps its name, the module keeps a buffer, ``weight_mask``/``bias_mask`` are
full-shape float buffers, the forward runs the module with ``weight * mask``), but:

- the Parameter *object* moves (NNI makes a new one), so an optimizer built before the pruner
  keeps training the masked model;
- the forward multiplies by a cached compact mask: nothing at all for a dense mask, a
  ``[out, 1, ...]`` column for a channel mask, the full mask only for fine-grained masks; an
  ``nn.Linear`` with a row mask multiplies its output instead (``batch * out`` work, not
  ``out * in``). The cache is keyed on the mask buffers' identity and version, so assigning or
  editing ``weight_mask`` in place (as NNI scripts do) is picked up.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
import torch
from torch import Tensor, nn

from purecompress.records import Mask

__all__ = ["PrunerModuleWrapper", "TARGETS"]

TARGETS = ("weight", "bias")


def compact_mask(mask: Tensor, dtype: torch.dtype) -> Tensor | None:
    """The cheapest tensor that multiplies like ``mask``: None if dense, ``[out, 1, ...]`` if rows.

    Args:
        mask: 0/1 tensor of the target's shape.
        dtype: the target's dtype (the result is in it).

    >>> compact_mask(torch.ones(2, 3), torch.float32) is None
    True
    >>> compact_mask(torch.tensor([[1., 1.], [0., 0.]]), torch.float32)
    tensor([[1.],
            [0.]])
    """
    keep = mask != 0
    if bool(keep.all()):
        return None
    if mask.dim() >= 2:
        rows = keep.reshape(keep.shape[0], -1)
        if bool((rows == rows[:, :1]).all()):
            return rows[:, :1].reshape(keep.shape[0], *([1] * (mask.dim() - 1))).to(dtype)
    return keep.to(dtype)


@attrs.frozen
class _Factors:
    """How the forward applies the masks.

    Attributes:
        params: target -> compact factor to multiply it by (absent: dense, no work).
        output: a factor for the module's output instead (``nn.Linear`` with a row mask: ``y * m``
            costs ``batch * out``, ``W * m`` costs ``out * in`` in the forward and again backward).
    """

    params: dict[str, Tensor]
    output: Tensor | None = None
    records: dict[str, Mask] = attrs.field(factory=dict)


def _plan(module: nn.Module, targets: tuple[str, ...], masks: tuple[Tensor | None, ...],
          dtype: torch.dtype) -> _Factors:
    factors = {t: compact_mask(m, dtype) for t, m in zip(targets, masks) if m is not None}
    factors = {t: f for t, f in factors.items() if f is not None}
    shapes = {t: tuple(m.shape) for t, m in zip(targets, masks) if m is not None}
    records = {t: Mask(f != 0, shapes[t]) for t, f in factors.items()}
    rows = factors.get("weight")
    if type(module) is nn.Linear and rows is not None and rows.shape[1:] == (1,):
        row = rows.reshape(-1)
        bias = dict(zip(targets, masks)).get("bias")
        # Masking the output also zeroes the bias of pruned rows: only equal when the bias mask does.
        if bias is None or torch.equal((bias != 0).to(dtype), row):
            return _Factors({}, row, records)
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

    def _factors(self) -> _Factors:
        """The cached compact masks, rebuilt when a mask buffer is replaced or edited in place."""
        masks = tuple(self._buffers[f"{t}_mask"] for t in self.targets)
        versions = tuple(-1 if m is None else m._version for m in masks)
        dtype = self._parameters["weight"].dtype
        cached = self._cache
        # The cache holds the mask tensors themselves (not ids): a new mask is never mistaken for an old one.
        if cached is None or cached[1] != versions or cached[2] != dtype \
                or any(a is not b for a, b in zip(cached[0], masks)):
            cached = (masks, versions, dtype, _plan(self.module, self.targets, masks, dtype))
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

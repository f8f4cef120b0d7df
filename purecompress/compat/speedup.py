"""NNI's ``ModelSpeedup`` (``nni.compression.pytorch.speedup``) on the functional shrinking core.

``ModelSpeedup(model, dummy_input, masks_file).speedup_model()`` replaces, in place, every layer
of ``model`` that loses channels with a smaller one, as NNI does; the plan, the slicing and the
folding of constants all come from :func:`purecompress.graph`. Differences from NNI 2.10:

- the graph is captured with ``torch.fx`` (NNI's ``torch.jit`` translation fails on many graphs);
- the result computes the masked model's function: the constant a pruned channel still emits
  (BatchNorm beta through ReLU) is folded into the next layer's bias instead of dropped, and
  layers that keep their shape get their masks baked in (NNI reloads the unmasked weights);
- ``confidence`` and ``batch_dim`` are accepted and checked but not needed: the analysis is
  structural, not sampled, so ``dummy_input`` is used as given (batch first);
- a dict ``dummy_input`` is passed as keyword inputs when its keys are parameters of
  ``forward``, else as the single positional input (``torch.jit.trace``'s reading);
- the masks are checked against the model first: unknown names, wrong shapes and values other
  than 0/1 (0.5, NaN) are clear errors naming the layer, raised before the model is touched.

After ``speedup_model()``, ``self.report`` holds the :class:`~purecompress.ShrinkReport`.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from purecompress import graph
from purecompress.graph import ChannelSlice, Replacement, ShrinkReport, replacement_for, shrink
from purecompress.pruning import Mask, masks_from_nni

__all__ = [
    "EmptyLayerError",
    "InputsNumberError",
    "ModelSpeedup",
    "OutputTypeError",
    "ShapeMisMatchError",
    "SpeedupError",
    "UnBalancedGroupError",
]

NniReplaceFn = Callable[[nn.Module, tuple[list[Tensor], Tensor, dict[str, Tensor]]], nn.Module]


_logger = logging.getLogger(__name__)

class SpeedupError(Exception):
    """NNI's base class of speedup errors (``error_code.SpeedupError``)."""

    def __init__(self, msg: str) -> None:
        super().__init__(msg)
        self.msg = msg

    def __str__(self) -> str:
        return str(self.msg)


class EmptyLayerError(SpeedupError, graph.EmptyLayerError):
    """A layer would be pruned to nothing."""

    def __init__(self, detail: str = "") -> None:
        super().__init__("Pruning a Layer to empty is not legal" + (f": {detail}" if detail else ""))


class ShapeMisMatchError(SpeedupError):
    """Kept input and output channel counts disagree (NNI's; not raised by the fx core)."""

    def __init__(self) -> None:
        super().__init__("Shape mismatch!")


class InputsNumberError(SpeedupError):
    """A replaced op got the wrong number of inputs (NNI's; not raised by the fx core)."""

    def __init__(self) -> None:
        super().__init__("The number of the inputs of the target OP is wrong")


class OutputTypeError(SpeedupError):
    """An op's output has an unexpected type (NNI's; not raised by the fx core)."""

    def __init__(self, current_type: Any, target_type: Any) -> None:
        super().__init__(f"The output type should be {target_type}, but {current_type} founded")


class UnBalancedGroupError(SpeedupError, graph.UnbalancedGroupsError):
    """A grouped conv would keep different channel counts in its groups."""

    def __init__(self, detail: str = "") -> None:
        super().__init__("The number remained filters in each group is different" + (f": {detail}" if detail else ""))


def _nni_adapter(fn: NniReplaceFn) -> Callable[[nn.Module, ChannelSlice], nn.Module]:
    """A table function from an NNI replace function ``fn(module, (in_masks, out_mask, weight_mask))``."""
    def replace(module: nn.Module, sl: ChannelSlice) -> nn.Module:
        weight = getattr(module, "weight", None)
        keep_in = sl.keep_in
        keep_out = sl.keep_out if sl.keep_out is not None else keep_in
        in_mask = keep_in.float()[None] if keep_in is not None else None
        out_mask = keep_out.float()[None] if keep_out is not None else None
        weight_mask = {}
        if isinstance(weight, Tensor):
            rows = keep_out if keep_out is not None and keep_out.numel() == weight.shape[0] else None
            dense = torch.ones_like(weight)
            if rows is not None:
                dense[~rows] = 0
            weight_mask["weight"] = dense
        new = fn(module, ([in_mask], out_mask, weight_mask))
        bias = getattr(new, "bias", None)
        if sl.bias_delta is not None and isinstance(bias, Tensor) and keep_out is not None:
            with torch.no_grad():
                bias.add_(sl.bias_delta[keep_out].to(bias))
        return new
    return replace


def _custom_table(model: nn.Module, funcs: Mapping[str, NniReplaceFn]) -> dict[type[nn.Module], Replacement]:
    table: dict[type[nn.Module], Replacement] = {}
    for module in model.modules():
        name = type(module).__name__
        if name in funcs and type(module) not in table:
            known = replacement_for(module)
            kind = known.kind if known is not None else "channelwise"
            dim = known.channel_dim if known is not None else 1
            table[type(module)] = Replacement(kind, _nni_adapter(funcs[name]), dim)
    return table


def _example_inputs(model: nn.Module, dummy_input: Any) -> Any:
    if isinstance(dummy_input, Tensor):
        return dummy_input
    if isinstance(dummy_input, (tuple, list)):
        if not all(isinstance(t, Tensor) for t in dummy_input):
            raise TypeError("Only support the tensor, list/tuple/dict of tensors as input")
        return tuple(dummy_input)
    if isinstance(dummy_input, Mapping):
        params = inspect.signature(model.forward).parameters
        return dict(dummy_input) if set(dummy_input) <= set(params) else (dict(dummy_input),)
    raise TypeError("Only support the tensor, list/tuple/dict of tensors as input")


def _set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, new)


class ModelSpeedup:
    """Shrink ``model`` in place according to ``masks_file`` (NNI 2.10's signature).

    Args:
        model: the model, unwrapped (call the pruner's ``_unwrap_model()`` first).
        dummy_input: a tensor, a tuple/list of tensors or a dict of tensors, batch first.
        masks_file: a path written by ``torch.save`` (loaded with ``weights_only=True``) or the
            masks dict ``{module name: {'weight': mask, 'bias': mask}}``.
        map_location: as in ``torch.load``.
        batch_dim: index of the batch dim of ``dummy_input`` (accepted for NNI; must be 0).
        confidence: NNI's sampling batch size (accepted, must be > 1; not needed here).
        customized_replace_func: ``{op type name: fn(module, (in_masks, out_mask, weight_mask))}``
            used instead of the built-in replacement for those module types.
    """

    def __init__(self, model: nn.Module, dummy_input: Any, masks_file: str | os.PathLike[str] | Mapping[str, Any],
                 map_location: Any = None, batch_dim: int = 0, confidence: int = 8,
                 customized_replace_func: Mapping[str, NniReplaceFn] | None = None) -> None:
        if confidence <= 1:
            raise AssertionError("confidence must be > 1 (NNI)")
        if batch_dim != 0:
            raise ValueError("purecompress's ModelSpeedup needs the batch in dim 0 of dummy_input")
        self.bound_model = model
        self.dummy_input = dummy_input
        self.batch_dim = batch_dim
        self.confidence = confidence
        if isinstance(masks_file, (str, os.PathLike)) and Path(masks_file).exists():
            self.masks = torch.load(masks_file, map_location=map_location, weights_only=True)
        elif isinstance(masks_file, Mapping):
            self.masks = dict(masks_file)
        else:
            raise Exception("Please provide the mask or the path of the mask file")  # noqa: TRY002  (NNI's type)
        self.customized_replace_func = dict(customized_replace_func or {})
        self.report: ShrinkReport | None = None

    def speedup_model(self) -> nn.Module:
        """Replace the layers that lose channels (in place) and bake the masks into the others.

        Returns:
            The same ``model`` object, now compact.

        Raises:
            ValueError: a mask holds values other than 0 and 1 (0.5, NaN) or is not a tensor
                (:func:`~purecompress.masks_from_nni`); a :class:`~purecompress.graph.ShrinkError`
                when a mask names no parameter of the model or has another shape. Both are raised
                before the model is touched.
        """
        model = self.bound_model
        wrappers = [(n, m) for n, m in model.named_modules() if type(m).__name__ == "PrunerModuleWrapper"]
        pruners = {id(p): p for _, m in wrappers for p in getattr(m, "pruner", [])[:1]}
        if wrappers and all(getattr(m, "pruner", None) for _, m in wrappers):
            # NNI 1.x scripts speed up the model their pruner still wraps (the masks come from the file):
            # unwrap it, as NNI's export leaves the weights on the inner modules, and say so
            _logger.warning("ModelSpeedup: modules %s were still wrapped by a 1.x pruner; they are unwrapped "
                            "first (that pruner no longer controls the model)", [n for n, _ in wrappers])
            for pruner in pruners.values():
                pruner._unwrap_model()
        wrapped = [n for n, m in model.named_modules() if type(m).__name__ == "PrunerModuleWrapper"]
        if wrapped:
            raise RuntimeError(f"modules {wrapped} are still wrapped by a pruner; call pruner._unwrap_model() "
                               "before ModelSpeedup")
        table = _custom_table(model, self.customized_replace_func)
        masks = {name: Mask(mask.keep.cpu(), mask.shape) for name, mask in masks_from_nni(self.masks).items()}
        try:
            compact, self.report = shrink(model, masks, _example_inputs(model, self.dummy_input),
                                          replacements=table)
        except graph.EmptyLayerError as err:
            raise EmptyLayerError(str(err)) from err
        except graph.UnbalancedGroupsError as err:
            raise UnBalancedGroupError(str(err)) from err
        replaced = set(self.report.replaced)
        for name in self.report.replaced:
            _set_submodule(model, name, compact.get_submodule(name))
        kept = compact.state_dict()
        with torch.no_grad():  # layers that keep their shape: the masked values, same tensors
            for name, value in model.state_dict().items():
                owner = name.rpartition(".")[0]
                if owner not in replaced and name in kept and kept[name].shape == value.shape:
                    value.copy_(kept[name])
        return model

"""NNI's ``count_flops_params(model, x, custom_ops=None, verbose=True, mode='default')``.

Same as NNI, but computed by :func:`purecompress.search.count_flops_params`: Conv and Linear
layers (``mode='full'``: with bias additions, norms, LeakyReLU, pools, upsampling), FLOPs per
sample at every call of a module, pruned output channels (masks of a wrapped model) not counted.
``custom_ops`` and RNN modules are not supported (``custom_ops`` says so).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from purecompress.compat.pruning.base import PrunerModuleWrapper
from purecompress.pruning import Mask
from purecompress.search import count_flops_params as _count

__all__ = ["count_flops_params"]

logger = logging.getLogger(__name__)


def _example(model: nn.Module, x: Any) -> Any:
    if isinstance(x, tuple) and all(isinstance(d, int) for d in x):  # NNI accepts an input shape
        param = next(model.parameters(), None)
        return torch.zeros(*x, device=param.device if param is not None else "cpu")
    return x


def count_flops_params(model: nn.Module, x: Any, custom_ops: dict[Any, Any] | None = None, verbose: bool = True,
                       mode: str = "default") -> tuple[int, int, list[dict[str, Any]]]:
    """FLOPs and parameters of ``model``'s Conv/Linear layers for one sample (NNI's return format).

    Args:
        model: a plain model, or one wrapped by a compat pruner (its masks are taken into account).
        x: an input tensor, a tuple of tensors, or an input shape tuple.
        custom_ops: not supported (NNI's per-module callbacks); must be None or empty.
        verbose: log the per-layer table (at INFO).
        mode: ``'default'`` (Conv and Linear) or ``'full'`` (also bias additions, BatchNorm, LeakyReLU,
            average pools and upsampling, NNI's numbers).

    NNI counts a wrapped model's pruned FLOPs as if dense; here only kept output channels count
    (input channels whose producer was pruned still count: an upper bound, as NNI documents).

    Returns:
        ``(flops, params, results)``: one result per module call (a module called 5 times has 5),
        each with name, module_type, weight_shape (0 without a weight), flops, params, input_size,
        output_size; params count each module once.
    """
    if custom_ops:
        raise NotImplementedError("count_flops_params(custom_ops=...) is not supported by purecompress")
    if mode not in ("default", "full"):
        raise ValueError(f"count_flops_params(mode={mode!r}): use 'default' (Conv, Linear) or 'full'")
    masks = {}
    for name, module in model.named_modules():
        if isinstance(module, PrunerModuleWrapper):
            for target in module.targets:
                mask = getattr(module, f"{target}_mask")
                if mask is not None:
                    masks[f"{name}.module.{target}"] = Mask.from_dense(mask)
    counts = _count(model, _example(model, x), masks, mode=mode)  # type: ignore[arg-type]
    results = []
    for call in counts.calls:
        weight = getattr(model.get_submodule(call.name), "weight", None)
        results.append({
            "name": call.name.removesuffix(".module"),
            "module_type": call.type_name,
            "weight_shape": list(weight.shape) if isinstance(weight, torch.Tensor) else 0,
            "flops": call.flops,
            "params": call.params,
            "input_size": list(call.input_shape),
            "output_size": list(call.output_shape),
        })
    if verbose:
        for r in results:
            logger.info("%s %s flops=%d params=%d", r["name"], r["module_type"], r["flops"], r["params"])
        logger.info("FLOPs total: %d, params total: %d", counts.flops, counts.params)
    return counts.flops, counts.params, results

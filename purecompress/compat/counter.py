"""NNI's ``count_flops_params(model, x, custom_ops=None, verbose=True, mode='default')``.

Same as NNI, but computed by :func:`purecompress.search.count_flops_params`: Conv and Linear
layers, FLOPs per sample, pruned output channels (masks of a wrapped model, or a model pruned and
unwrapped) not counted. ``custom_ops`` and ``mode='full'`` are not supported and say so.
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
        mode: only ``'default'`` (Conv and Linear).

    NNI counts a wrapped model's pruned FLOPs as if dense; here only kept output channels count
    (input channels whose producer was pruned still count: an upper bound, as NNI documents).

    Returns:
        ``(flops, params, results)`` where each result has name, module_type, weight_shape, flops,
        params, input_size, output_size.
    """
    if custom_ops:
        raise NotImplementedError("count_flops_params(custom_ops=...) is not supported by purecompress")
    if mode != "default":
        raise NotImplementedError(f"count_flops_params(mode={mode!r}): only mode='default' (Conv, Linear)")
    masks = {}
    for name, module in model.named_modules():
        if isinstance(module, PrunerModuleWrapper):
            for target in module.targets:
                mask = getattr(module, f"{target}_mask")
                if mask is not None:
                    masks[f"{name}.module.{target}"] = Mask.from_dense(mask)
    counts = _count(model, _example(model, x), masks)
    results = []
    for name, layer in counts.layers.items():
        results.append({
            "name": name.removesuffix(".module"),
            "module_type": layer.type_name,
            "weight_shape": list(model.get_submodule(name).weight.shape),
            "flops": layer.flops,
            "params": layer.params,
            "input_size": list(layer.input_shape),
            "output_size": list(layer.output_shape),
        })
    if verbose:
        for r in results:
            logger.info("%s %s flops=%d params=%d", r["name"], r["module_type"], r["flops"], r["params"])
        logger.info("FLOPs total: %d, params total: %d", counts.flops, counts.params)
    return counts.flops, counts.params, results

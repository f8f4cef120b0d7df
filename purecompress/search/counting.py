"""FLOPs and parameter counts as a pure function of a model, its masks and an example input.

Only the kept part counts: a Conv/Linear weight contributes its kept elements (a channel mask on
``[64, 32, 3, 3]`` keeping 48 channels counts ``48 * 32 * 9`` weights, times the output's spatial
size for FLOPs), a bias its kept entries. This equals the compact model after shrinking the
masked output channels (NNI's masked-model rule); input channels whose producer was pruned are
not subtracted, so counts are an upper bound for chains of pruned layers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import attrs
import torch
from torch import Tensor, nn
from torch.func import functional_call

from purecompress.pruning import Mask

__all__ = ["Counts", "LayerCount", "count_flops_params", "with_masks"]

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


@attrs.frozen
class LayerCount:
    """One counted module.

    Attributes:
        name: module name; type_name: its class name.
        flops: multiply-accumulates per sample (kept part); params: kept parameter entries.
        input_shape / output_shape: per-sample shapes seen in the forward.
        kernel / stride: geometric mean of the kernel size and stride (1 for Linear).
        spatial: output positions per sample (FLOPs = kept weights * spatial).
        weight_numel / bias_numel: dense sizes.
    """

    name: str
    type_name: str
    flops: int
    params: int
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    kernel: float = 1.0
    stride: float = 1.0
    spatial: int = 1
    weight_numel: int = 0
    bias_numel: int = 0


@attrs.frozen
class Counts:
    """Attributes: flops and params of the whole model (counted modules), layers by name."""

    flops: int
    params: int
    layers: Mapping[str, LayerCount]


def _kept(masks: Mapping[str, Mask], name: str, t: Tensor | None) -> int:
    if t is None:
        return 0
    return int(masks[name].kept()) if name in masks else t.numel()


def _count(name: str, module: nn.Module, x: Tensor, y: Tensor, masks: Mapping[str, Mask]) -> LayerCount:
    weight = _kept(masks, f"{name}.weight" if name else "weight", getattr(module, "weight", None))
    bias_t = getattr(module, "bias", None)
    bias = _kept(masks, f"{name}.bias" if name else "bias", bias_t)
    spatial = math.prod(y.shape[2:]) if isinstance(module, _CONV) else math.prod(y.shape[1:-1])
    kernel = stride = 1.0
    if isinstance(module, _CONV):
        flops = weight * spatial  # NNI counts no bias FLOPs by default
        kernel = math.prod(module.kernel_size) ** (1 / len(module.kernel_size))
        stride = math.prod(module.stride) ** (1 / len(module.stride))
    else:
        flops = weight * spatial
    w, b = getattr(module, "weight", None), bias_t
    return LayerCount(name, type(module).__name__, int(flops), weight + bias, tuple(x.shape[1:]),
                      tuple(y.shape[1:]), kernel, stride, int(spatial), w.numel() if w is not None else 0,
                      b.numel() if b is not None else 0)


def with_masks(counts: Counts, masks: Mapping[str, Mask]) -> Counts:
    """Recount ``counts`` (of the dense model) under ``masks`` without running the model again.

    >>> m = nn.Linear(4, 3)
    >>> mask = Mask(torch.tensor([[True], [False], [True]]), (3, 4))
    >>> with_masks(count_flops_params(m, torch.randn(1, 4)), {'weight': mask}).flops
    8
    """
    layers = {}
    for name, c in counts.layers.items():
        prefix = f"{name}." if name else ""
        weight = int(masks[prefix + "weight"].kept()) if prefix + "weight" in masks else c.weight_numel
        bias = int(masks[prefix + "bias"].kept()) if prefix + "bias" in masks else c.bias_numel
        layers[name] = attrs.evolve(c, flops=weight * c.spatial, params=weight + bias)
    return Counts(sum(r.flops for r in layers.values()), sum(r.params for r in layers.values()), layers)


def count_flops_params(model: nn.Module, example_input: Any, masks: Mapping[str, Mask] | None = None) -> Counts:
    """FLOPs (multiply-accumulates) and parameters of ``model`` under ``masks``, per sample.

    Counts Conv1d/2d/3d and Linear, as NNI's default mode does: weight multiply-accumulates
    (bias additions left out), params include kept biases. The model is
    run once on ``example_input`` (a tensor or a tuple of positional inputs) through
    :func:`torch.func.functional_call` on copies of its buffers, with hooks that exist only during
    this call: the model, its buffers and its training mode are left as they were.

    Args:
        model: any module.
        example_input: batch of inputs (the batch size does not change the counts).
        masks: parameter name -> :class:`~purecompress.Mask`; missing means dense.

    >>> m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8 * 4 * 4, 10))
    >>> c = count_flops_params(m, torch.randn(2, 3, 6, 6))
    >>> c.layers['0'].flops, c.layers['2'].flops, c.params
    (3456, 1280, 1514)
    """
    masks = masks or {}
    results: dict[str, LayerCount] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, (*_CONV, nn.Linear)):
            def hook(mod: nn.Module, args: tuple[Any, ...], out: Tensor, name: str = name) -> None:
                results[name] = _count(name, mod, args[0], out, masks)
            handles.append(module.register_forward_hook(hook))
    state = {k: v.detach() for k, v in model.named_parameters()}
    state.update({k: v.detach().clone() for k, v in model.named_buffers()})
    inputs = example_input if isinstance(example_input, tuple) else (example_input,)
    inputs = tuple(x[:1] if isinstance(x, Tensor) and x.dim() > 0 else x for x in inputs)  # counts are per sample
    try:
        with torch.no_grad():
            functional_call(model, state, inputs)
    finally:
        for handle in handles:
            handle.remove()
    return Counts(sum(r.flops for r in results.values()), sum(r.params for r in results.values()), results)

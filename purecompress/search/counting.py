"""FLOPs and parameter counts as a pure function of a model, its masks and an example input.

Only the kept part counts: a Conv/Linear weight contributes its kept elements (a channel mask on
``[64, 32, 3, 3]`` keeping 48 channels counts ``48 * 32 * 9`` weights, times the output's spatial
size for FLOPs), a bias its kept entries. This equals the compact model after shrinking the
masked output channels (NNI's masked-model rule); input channels whose producer was pruned are
not subtracted, so counts are an upper bound for chains of pruned layers. A module called several
times in one forward counts its FLOPs at every call and its parameters once (NNI's rule).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

import attrs
import torch
from torch import Tensor, nn
from torch.func import functional_call

from purecompress.pruning import Mask

__all__ = ["FULL_TYPES", "Counts", "LayerCount", "count_flops_params", "with_masks"]

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_POOL = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)
_ADAPTIVE_POOL = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)
_UPSAMPLE = (nn.Upsample, nn.UpsamplingBilinear2d, nn.UpsamplingNearest2d)
#: The modules ``mode='full'`` counts besides Conv/Linear (NNI 2.10's list), with bias additions.
FULL_TYPES: tuple[type[nn.Module], ...] = (*_BN, nn.LeakyReLU, *_POOL, *_ADAPTIVE_POOL, *_UPSAMPLE)
# FLOPs per output element of an upsampling mode (NNI's numbers; other modes count 0).
_UPSAMPLE_OPS = {"linear": 5, "bilinear": 11, "bicubic": 224 + 35, "trilinear": 13 * 2 + 5}


@attrs.frozen
class LayerCount:
    """One counted module (one call of it, or all its calls in :attr:`Counts.layers`).

    Attributes:
        name: module name; type_name: its class name.
        flops: multiply-accumulates per sample (kept part); params: kept parameter entries.
        input_shape / output_shape: per-sample shapes seen in the (first) call.
        kernel / stride: geometric mean of the kernel size and stride (1 for Linear).
        spatial: output positions per sample (FLOPs = kept weights * spatial), summed over calls.
        weight_numel / bias_numel: dense sizes.
        bias_flops: bias additions count too (``mode='full'``): ``+ kept bias * spatial``.
        fixed_flops: FLOPs that no weight mask changes (norms, activations, pools in ``'full'``).
        per_weight: FLOPs are kept weights times positions (Conv, Linear); else ``fixed_flops`` alone.
        calls: how many calls this count covers.
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
    bias_flops: bool = False
    fixed_flops: int = 0
    per_weight: bool = True
    calls: int = 1

    def merge(self, other: LayerCount) -> LayerCount:
        """The count of both calls of one module: FLOPs and positions add, parameters once."""
        return attrs.evolve(self, flops=self.flops + other.flops, spatial=self.spatial + other.spatial,
                            fixed_flops=self.fixed_flops + other.fixed_flops, calls=self.calls + other.calls)


@attrs.frozen
class Counts:
    """Attributes: flops and params of the whole model (counted modules), layers by name (every
    call of a module merged, :meth:`LayerCount.merge`), calls (one count per call, in call order)."""

    flops: int
    params: int
    layers: Mapping[str, LayerCount]
    calls: tuple[LayerCount, ...] = ()


def _kept(masks: Mapping[str, Mask], name: str, t: Tensor | None) -> int:
    if t is None:
        return 0
    return int(masks[name].kept()) if name in masks else t.numel()


def _flops(weight: int, bias: int, spatial: int, bias_flops: bool, fixed: int) -> int:
    return weight * spatial + (bias * spatial if bias_flops else 0) + fixed


def _fixed_flops(module: nn.Module, x: Tensor, y: Tensor) -> int:
    """NNI's per-sample FLOPs of the modules only ``mode='full'`` counts."""
    if isinstance(module, _BN):
        return 2 * x[0].numel()
    if isinstance(module, nn.LeakyReLU):
        return x[0].numel()
    if isinstance(module, _POOL):
        return y[0].numel()
    if isinstance(module, _ADAPTIVE_POOL):
        size = module.output_size
        spatial = tuple(int(n) for n in x.shape[2:])
        wanted = tuple(size) if isinstance(size, (tuple, list)) else (size,) * len(spatial)
        out = [n if o is None else int(o) for n, o in zip(spatial, wanted)]
        kernel = math.prod(n // o for n, o in zip(spatial, out))
        return (kernel + 1) * y[0].numel()  # the additions of a window and one division
    if isinstance(module, _UPSAMPLE):
        return _UPSAMPLE_OPS.get(module.mode, 0) * y[0].numel()
    raise TypeError(f"no FLOPs rule for {type(module).__name__}")


def _count(name: str, module: nn.Module, x: Tensor, y: Tensor, masks: Mapping[str, Mask],
           full: bool) -> LayerCount:
    weight = _kept(masks, f"{name}.weight" if name else "weight", getattr(module, "weight", None))
    bias_t = getattr(module, "bias", None)
    bias = _kept(masks, f"{name}.bias" if name else "bias", bias_t)
    w = getattr(module, "weight", None)
    kernel = stride = 1.0
    if isinstance(module, (*_CONV, nn.Linear)):
        spatial = math.prod(y.shape[2:]) if isinstance(module, _CONV) else math.prod(y.shape[1:-1])
        if isinstance(module, _CONV):
            kernel = math.prod(module.kernel_size) ** (1 / len(module.kernel_size))
            stride = math.prod(module.stride) ** (1 / len(module.stride))
        flops, fixed, bias_flops = _flops(weight, bias, spatial, full, 0), 0, full
    else:
        spatial, bias_flops = 1, False
        fixed = _fixed_flops(module, x, y)
        flops = fixed
    return LayerCount(name, type(module).__name__, int(flops), weight + bias, tuple(x.shape[1:]),
                      tuple(y.shape[1:]), kernel, stride, int(spatial), w.numel() if isinstance(w, Tensor) else 0,
                      bias_t.numel() if isinstance(bias_t, Tensor) else 0, bias_flops, int(fixed),
                      isinstance(module, (*_CONV, nn.Linear)))


def with_masks(counts: Counts, masks: Mapping[str, Mask]) -> Counts:
    """Recount ``counts`` (of the dense model) under ``masks`` without running the model again.

    >>> m = nn.Linear(4, 3)
    >>> mask = Mask(torch.tensor([[True], [False], [True]]), (3, 4))
    >>> with_masks(count_flops_params(m, torch.randn(1, 4)), {'weight': mask}).flops
    8
    """
    def recount(c: LayerCount) -> LayerCount:
        prefix = f"{c.name}." if c.name else ""
        weight = int(masks[prefix + "weight"].kept()) if prefix + "weight" in masks else c.weight_numel
        bias = int(masks[prefix + "bias"].kept()) if prefix + "bias" in masks else c.bias_numel
        if not c.per_weight:  # norms, activations, pools: no mask changes their FLOPs
            return attrs.evolve(c, params=weight + bias)
        return attrs.evolve(c, flops=_flops(weight, bias, c.spatial, c.bias_flops, c.fixed_flops),
                            params=weight + bias)

    layers = {name: recount(c) for name, c in counts.layers.items()}
    return Counts(sum(r.flops for r in layers.values()), sum(r.params for r in layers.values()), layers,
                  tuple(recount(c) for c in counts.calls))


def count_flops_params(model: nn.Module, example_input: Any, masks: Mapping[str, Mask] | None = None, *,
                       mode: Literal["default", "full"] = "default") -> Counts:
    """FLOPs (multiply-accumulates) and parameters of ``model`` under ``masks``, per sample.

    ``mode='default'`` counts Conv1d/2d/3d (and transposed) and Linear, as NNI's default mode does:
    weight multiply-accumulates (bias additions left out), params include kept biases.
    ``mode='full'`` adds bias additions and the modules of :data:`FULL_TYPES` (BatchNorm: 2 per
    element, LeakyReLU: 1, average pools, upsampling), NNI's ``'full'`` numbers. A module called
    several times counts its FLOPs at every call and its parameters once. The model is run once on
    ``example_input`` (a tensor or a tuple of positional inputs) through
    :func:`torch.func.functional_call` on copies of its buffers, with hooks that exist only during
    this call: the model, its buffers and its training mode are left as they were.

    Args:
        model: any module.
        example_input: batch of inputs (the batch size does not change the counts).
        masks: parameter name -> :class:`~purecompress.Mask`; missing means dense.
        mode: ``'default'`` or ``'full'``.

    >>> m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8 * 4 * 4, 10))
    >>> c = count_flops_params(m, torch.randn(2, 3, 6, 6))
    >>> c.layers['0'].flops, c.layers['2'].flops, c.params
    (3456, 1280, 1514)
    >>> count_flops_params(m, torch.randn(2, 3, 6, 6), mode='full').flops  # + 8 * 16 + 10 bias additions
    4874
    """
    if mode not in ("default", "full"):
        raise ValueError(f"mode must be 'default' or 'full', got {mode!r}")
    types = (*_CONV, nn.Linear) + (FULL_TYPES if mode == "full" else ())
    masks = masks or {}
    calls: list[LayerCount] = []
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, types):
            def hook(mod: nn.Module, args: tuple[Any, ...], out: Tensor, name: str = name) -> None:
                calls.append(_count(name, mod, args[0], out, masks, mode == "full"))
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
    layers: dict[str, LayerCount] = {}
    for c in calls:
        layers[c.name] = layers[c.name].merge(c) if c.name in layers else c
    return Counts(sum(c.flops for c in calls), sum(r.params for r in layers.values()), layers, tuple(calls))

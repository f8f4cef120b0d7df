"""The propagated masks: a plan's channel slices written back as masks on the model's parameters.

For every layer that changes, :func:`_propagated` masks each removed channel where it lives: a
producer's weight rows and bias for its removed outputs and its weight columns for its removed
inputs (:func:`_grid`, group by group), and a norm layer's per-channel weight and bias. Each new
mask is combined with the one already given for the same parameter (:func:`_and`), so the masked
dense model computes what the compact model does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from purecompress.records import Mask, Masks

from .replace import ChannelSlice

__all__: list[str] = []


def _grid(module: nn.Module, keep_in: Tensor, keep_out: Tensor) -> Tensor:
    """``[out, in/groups]`` keep grid of a producer's weight (rows: outputs, cols: inputs)."""
    if isinstance(module, nn.Linear):
        return keep_out[:, None] & keep_in[None, :]
    g = module.groups
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        c_out = keep_out.numel() // g
        cols = keep_out.reshape(g, c_out).repeat_interleave(keep_in.numel() // g, 0)
        return keep_in[:, None] & cols
    rows = keep_in.reshape(g, -1).repeat_interleave(keep_out.numel() // g, 0)
    return keep_out[:, None] & rows


def _and(a: Mask | None, b: Mask) -> Mask:
    if a is None:
        return b
    b = Mask(b.keep.to(a.keep.device), b.shape)
    try:
        return a & b
    except ValueError:  # grids that do not nest: combine at element granularity
        return Mask.from_dense(a.to_dense() * b.to_dense())


def _propagated(
    model: nn.Module, masks: Mapping[str, Mask], slices: Mapping[str, ChannelSlice], calls: Mapping[str, Any]
) -> Masks:
    out: Masks = dict(masks)
    for name, sl in slices.items():
        module = model.get_submodule(name)
        prefix = f"{name}." if name else ""
        keep_in = sl.keep_in
        if calls[name].kind == "producer":
            keep_out = sl.keep_out
            w = module.weight
            grid = _grid(module, keep_in, keep_out)
            new = {"weight": Mask(grid.reshape(*grid.shape, *([1] * (w.dim() - 2))), tuple(w.shape))}
            if getattr(module, "bias", None) is not None:
                new["bias"] = Mask(keep_out, tuple(module.bias.shape))
        else:
            new = {
                k: Mask(keep_in, tuple(p.shape))
                for k, p in module.named_parameters(recurse=False)
                if p.dim() == 1 and p.numel() == keep_in.numel()
            }
        for k, mask in new.items():
            if not bool(mask.keep.all()):
                out[prefix + k] = _and(out.get(prefix + k), mask)
    return out

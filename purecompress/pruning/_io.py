"""Saving and loading masks: safetensors (safe, compact) and NNI's ``{module: {'weight', 'bias'}}`` form.

Nothing here unpickles: safetensors files hold tensors and a JSON header only, and NNI-format
files are read with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from purecompress.pruning._records import Mask, Masks

__all__ = [
    "load_masks",
    "load_nni_masks",
    "masks_from_nni",
    "masks_to_nni",
    "save_masks",
]


_SHAPES_KEY = "purecompress.mask_shapes"



def save_masks(path: str | os.PathLike[str], masks: Mapping[str, Mask]) -> None:
    """Write ``masks`` to a safetensors file (block-granularity bools plus shapes in the header).

    >>> import tempfile, os
    >>> m = {'w': Mask(torch.tensor([[True], [False]]), (2, 3))}
    >>> path = os.path.join(tempfile.mkdtemp(), 'masks.safetensors')
    >>> save_masks(path, m); load_masks(path) == m
    True
    """
    tensors = {name: mask.keep.contiguous() for name, mask in masks.items()}
    shapes = {name: list(mask.shape) for name, mask in masks.items()}
    save_file(tensors, os.fspath(path), metadata={_SHAPES_KEY: json.dumps(shapes)})



def load_masks(path: str | os.PathLike[str]) -> Masks:
    """Read masks written by :func:`save_masks`."""
    with safe_open(os.fspath(path), framework="pt") as f:
        header = (f.metadata() or {}).get(_SHAPES_KEY)
    if header is None:
        raise ValueError(f"{os.fspath(path)!r} is not a purecompress masks file (no {_SHAPES_KEY} metadata)")
    shapes = json.loads(header)
    tensors = load_file(os.fspath(path))
    if set(shapes) != set(tensors):
        raise ValueError(f"{os.fspath(path)!r}: header and tensors disagree on mask names")
    return {name: Mask(tensors[name].to(torch.bool), tuple(shapes[name])) for name in tensors}



def masks_to_nni(masks: Mapping[str, Mask], *,
                 dtype: torch.dtype = torch.float32) -> dict[str, dict[str, Tensor | None]]:
    """NNI's mask format: ``{module: {'weight': 0/1 tensor, 'bias': 0/1 tensor or None}}``.

    Every module with a ``weight`` mask gets a ``'bias'`` key (None without a bias mask), as NNI's
    exported files do.
    """
    out: dict[str, dict[str, Tensor | None]] = {}
    for name, mask in masks.items():
        module, _, target = name.rpartition(".")
        out.setdefault(module, {})[target] = mask.to_dense(dtype)
    for targets in out.values():
        if "weight" in targets:
            targets.setdefault("bias", None)
    return out



def masks_from_nni(nni_masks: Mapping[str, Mapping[str, Tensor | None]]) -> Masks:
    """Core masks (element granularity) from NNI's format; None entries are dense."""
    out = {}
    for module, targets in nni_masks.items():
        for target, tensor in targets.items():
            if tensor is not None:
                out[f"{module}.{target}" if module else target] = Mask.from_dense(tensor)
    return out



def load_nni_masks(path: str | os.PathLike[str]) -> Masks:
    """Read an NNI mask file (``torch.save`` of the dict format) safely (``weights_only=True``)."""
    data = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    if not isinstance(data, Mapping):
        raise ValueError(f"{os.fspath(path)!r} does not hold an NNI mask dict")
    return masks_from_nni(data)

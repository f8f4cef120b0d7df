"""Saving and loading masks: safetensors (safe, compact) and NNI's ``{module: {'weight', 'bias'}}`` form.

Nothing here unpickles: safetensors files hold tensors and a JSON header only, and NNI-format
files are read with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import torch
from safetensors.torch import save_file
from torch import Tensor

from purecompress._files import FileFormatError, read_safetensors
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

    Masks that share one keep tensor (the members of a dependency set, from
    :func:`~purecompress.allocate_dependency_aware`) are written as copies, which safetensors
    requires; they load back equal, each with its own tensor.

    >>> import tempfile, os
    >>> m = {'w': Mask(torch.tensor([[True], [False]]), (2, 3))}
    >>> path = os.path.join(tempfile.mkdtemp(), 'masks.safetensors')
    >>> save_masks(path, m); load_masks(path) == m
    True
    """
    # a copy per mask: safetensors refuses tensors that share memory (block-granularity bools, so cheap)
    tensors = {name: mask.keep.detach().cpu().clone(memory_format=torch.contiguous_format)
               for name, mask in masks.items()}
    shapes = {name: list(mask.shape) for name, mask in masks.items()}
    save_file(tensors, os.fspath(path), metadata={_SHAPES_KEY: json.dumps(shapes)})



def _checked_shape(path: str, name: str, shape: object, keep: Tensor) -> tuple[int, ...]:
    """``shape`` from the header, checked against the keep grid ``keep`` read for mask ``name``."""
    where = f"{path!r}: mask {name!r}"
    if not isinstance(shape, list) or any(isinstance(n, bool) or not isinstance(n, int) or n < 0 for n in shape):
        raise FileFormatError(f"{where}: the recorded shape {shape!r} is not a list of non-negative ints")
    if keep.dtype != torch.bool:
        raise FileFormatError(f"{where}: the keep tensor is {keep.dtype}, not torch.bool")
    grid = tuple(keep.shape)
    if len(shape) != len(grid) or any(g < 1 or n % g for n, g in zip(shape, grid)):
        raise FileFormatError(f"{where}: a keep grid of shape {grid} does not tile the recorded parameter shape "
                              f"{tuple(shape)} (same rank, each size a multiple of the grid's)")
    return tuple(shape)



def load_masks(path: str | os.PathLike[str]) -> Masks:
    """Read masks written by :func:`save_masks`.

    Raises:
        FileFormatError: the file is not a safetensors file, or its header does not describe its
            keep tensors: names that differ, a shape that is not a list of non-negative ints, or a
            keep grid that does not tile the recorded shape (the message names the file and the mask).
    """
    name = os.fspath(path)
    shapes, tensors = read_safetensors(name, _SHAPES_KEY, "masks")
    if not isinstance(shapes, dict):
        raise FileFormatError(f"{name!r}: the {_SHAPES_KEY!r} header is not a mapping of mask names to shapes")
    if set(shapes) != set(tensors):
        missing, extra = sorted(set(shapes) - set(tensors)), sorted(set(tensors) - set(shapes))
        raise FileFormatError(f"{name!r}: header and tensors disagree on mask names "
                              f"(in the header only: {missing}; tensors only: {extra})")
    return {key: Mask(keep, _checked_shape(name, key, shapes[key], keep)) for key, keep in tensors.items()}



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
    """Core masks (element granularity) from NNI's format; None entries are dense.

    Raises:
        ValueError: an entry is not a ``{target: tensor or None}`` mapping, or a mask holds values
            other than 0 and 1 (0.5, NaN: NNI would scale the weight by them, a core mask cannot);
            the message names the module and the target.

    >>> masks_from_nni({'fc': {'weight': torch.tensor([[1., 0.]]), 'bias': None}})['fc.weight'].keep
    tensor([[ True, False]])
    """
    out = {}
    for module, targets in nni_masks.items():
        if not isinstance(targets, Mapping):
            raise ValueError(f"masks for module {module!r} must be a {{'weight': tensor, 'bias': tensor or None}} "
                             f"dict, got {type(targets).__name__}")
        for target, tensor in targets.items():
            name = f"{module}.{target}" if module else str(target)
            if tensor is None:
                continue
            if not isinstance(tensor, Tensor):
                raise ValueError(f"mask {name!r} must be a tensor or None, got {type(tensor).__name__}")
            tensor = tensor.detach()
            if tensor.dtype != torch.bool and not bool(((tensor == 0) | (tensor == 1)).all()):
                raise ValueError(f"mask {name!r} holds values other than 0 and 1 (e.g. 0.5 or NaN): "
                                 "a mask keeps (1) or prunes (0) each entry")
            out[name] = Mask.from_dense(tensor)
    return out



def load_nni_masks(path: str | os.PathLike[str]) -> Masks:
    """Read an NNI mask file (``torch.save`` of the dict format) safely (``weights_only=True``)."""
    data = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    if not isinstance(data, Mapping):
        raise ValueError(f"{os.fspath(path)!r} does not hold an NNI mask dict")
    return masks_from_nni(data)

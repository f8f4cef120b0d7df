"""NNI 2.10's ``apply_compression_results`` and ``get_total_num_weights``
(``nni.compression.pytorch.utils.apply_compression`` / ``.num_param_counter``).

``apply_compression_results`` bakes an exported mask file into a plain model for inference: each
mask goes through the core's :class:`~purecompress.Mask` (:func:`purecompress.masks_from_nni`),
and the file loads with ``weights_only=True``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import nn

from purecompress.pruning import load_nni_masks
from purecompress.selectors import DEFAULT_OP_TYPES

__all__ = ["apply_compression_results", "get_total_num_weights"]


def apply_compression_results(model: nn.Module, masks_file: str | os.PathLike[str],
                              map_location: str | torch.device | None = None) -> None:
    """Multiply ``model``'s weights and biases by the masks in ``masks_file`` (in place; for inference).

    Args:
        model: the plain (unwrapped) model the masks were exported for.
        masks_file: a mask file from ``export_model(model_path, mask_path)``:
            ``{module: {'weight': mask, 'bias': mask or None}}``.
        map_location: unused (the masks follow each parameter's device); kept for NNI's signature.

    Raises:
        KeyError: a mask names a module or parameter the model does not have.
        ValueError: a mask's shape differs from its parameter's.
    """
    del map_location
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, mask in load_nni_masks(masks_file).items():
            if name not in params:
                raise KeyError(f"the mask file has a mask for {name!r}, which the model does not have")
            param = params[name]
            if tuple(param.shape) != tuple(mask.shape):
                raise ValueError(f"{name}: mask of shape {mask.shape} for a parameter of shape {tuple(param.shape)}")
            param.copy_(mask.apply(param))


def get_total_num_weights(model: nn.Module, op_types: Sequence[str] = ("default",)) -> int:
    """Number of weight entries of the modules of ``op_types`` (``'default'``: NNI's weighted types).

    >>> get_total_num_weights(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Linear(2, 3)))
    24
    >>> get_total_num_weights(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Linear(2, 3)), ['Linear'])
    6
    """
    types = {t for t in op_types if t != "default"} | (set(DEFAULT_OP_TYPES) if "default" in op_types else set())
    total = 0
    for name, module in model.named_modules():
        if module is model or type(module).__name__ not in types:
            continue
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.Tensor):
            raise ValueError(f"module {name!r} ({type(module).__name__}) has no weight to count")
        total += weight.numel()
    return total

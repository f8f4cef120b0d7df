"""NNI 2.10's ``fix_mask_conflict`` (``nni.compression.pytorch.utils.mask_conflict``) on the core.

Masks computed layer by layer conflict where layers depend on each other; this fixes them as
NNI does, in two passes: the group pass (:func:`purecompress.equalize_groups` on each grouped
layer's channel mask, with :class:`~purecompress.compat.shape_dependency.GroupDependency`), then
the channel pass (:func:`purecompress.unify_channels` over the sets of
:class:`~purecompress.compat.shape_dependency.ChannelDependency`, or of
:class:`~purecompress.compat.shape_dependency.InputChannelDependency` for masks that prune input
channels). Mask files load with ``weights_only=True``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from purecompress.compat.shape_dependency import ChannelDependency, GroupDependency, InputChannelDependency
from purecompress.pruning import (
    Mask,
    channel_keep,
    channel_mask,
    channel_sparsity,
    equalize_groups,
    is_channel_mask,
    masks_from_nni,
    unify_channels,
)

__all__ = ["detect_channel_prune_type", "detect_mask_prune_dim", "fix_mask_conflict"]

_logger = logging.getLogger(__name__)

NniMasks = Mapping[str, Mapping[str, Tensor | None]]


def _load(masks: NniMasks | str | os.PathLike[str]) -> dict[str, dict[str, Tensor | None]]:
    if isinstance(masks, (str, os.PathLike)):
        if not os.path.exists(masks):
            raise FileNotFoundError(f"mask file {os.fspath(masks)!r} does not exist")
        masks = torch.load(os.fspath(masks), map_location="cpu", weights_only=True)
    if not isinstance(masks, Mapping) or not masks:
        raise ValueError("masks must be a non-empty dict {module: {'weight': mask, 'bias': mask}} or its file")
    return {name: dict(targets) for name, targets in masks.items()}


def detect_channel_prune_type(masks: NniMasks, model: nn.Module) -> str:
    """``'Batchnorm'`` when every mask is on a BatchNorm2d (the Slim pruner's), else ``'Filter'``."""
    modules = dict(model.named_modules())
    return "Batchnorm" if all(isinstance(modules.get(name), nn.BatchNorm2d) for name in masks) else "Filter"


def detect_mask_prune_dim(masks: NniMasks, model: nn.Module) -> int:
    """0 when the Conv2d masks prune output channels (filters) at least as much as input channels, else 1
    (NNI's rule; 1 for AMC's masks)."""
    modules = dict(model.named_modules())
    convs = [Mask.from_dense(t["weight"]) for name, t in masks.items()
             if type(modules.get(name)) is nn.Conv2d and t.get("weight") is not None]
    if not convs:
        _logger.warning("no Conv2d masks found: fixing output channels")
        return 0
    pruned = [sum(channel_sparsity(m, dim) * m.shape[dim] for m in convs) / sum(m.shape[dim] for m in convs)
              for dim in (0, 1)]
    return 0 if pruned[0] >= pruned[1] else 1


def _fix_groups(masks: dict[str, dict[str, Tensor | None]], model: nn.Module, dummy_input: Any) -> None:
    groups = GroupDependency(model, dummy_input)
    for name, count in groups.dependency.items():
        weight = masks.get(name, {}).get("weight")
        if weight is None:
            continue
        mask = Mask.from_dense(weight)
        if not is_channel_mask(mask, 0):
            _logger.info("%s has a fine-grained mask: its groups are left as they are", name)
            continue
        keep = equalize_groups(channel_keep(mask, 0), count, groups.min_groups[name])
        masks[name]["weight"] = channel_mask(keep, mask.shape, 0).to_dense(weight.dtype).to(weight.device)
        bias = masks[name].get("bias")
        if bias is not None:
            masks[name]["bias"] = keep.to(bias.dtype).to(bias.device)


def _fix_channels(masks: dict[str, dict[str, Tensor | None]], model: nn.Module, dummy_input: Any) -> None:
    dim = detect_mask_prune_dim(masks, model)
    if dim == 0:
        sets = ChannelDependency(model, dummy_input, prune_type=detect_channel_prune_type(masks, model)).dependency_sets
    else:
        sets = InputChannelDependency(model, dummy_input).dependency_sets
    records = masks_from_nni(masks)
    unified = unify_channels(records, [[f"{m}.weight" for m in sorted(s)] for s in sets], dim=dim)
    for members in sets:
        for name in members:
            key = f"{name}.weight"
            if key not in records or unified[key] is records[key]:
                continue
            old = masks[name]["weight"]
            masks[name]["weight"] = unified[key].to_dense(old.dtype).to(old.device)  # type: ignore[union-attr]
            bias = masks[name].get("bias")
            if bias is not None and dim == 0:
                masks[name]["bias"] = channel_keep(unified[key], 0).to(bias.dtype).to(bias.device)


def fix_mask_conflict(masks: NniMasks | str | os.PathLike[str], model: nn.Module, dummy_input: Any,
                      traced: Any = None) -> dict[str, dict[str, Tensor | None]]:
    """Fix the conflicts of ``masks`` (NNI's dict, or its file) between dependent layers of ``model``.

    Args:
        masks: ``{module: {'weight': 0/1 tensor, 'bias': 0/1 tensor or None}}`` or a file of it.
        model: the model the masks are for (unwrapped; not modified).
        dummy_input: an example input, to capture the graph.
        traced: NNI's jit graph; not accepted (purecompress captures with torch.fx).

    Returns:
        The fixed masks in NNI's format: grouped layers prune the same count in every group,
        channel-dependent layers keep the union of their kept channels.
    """
    if traced is not None:
        raise ValueError("fix_mask_conflict(traced=...): a torch.jit graph is not accepted; purecompress captures "
                         "the graph with torch.fx from model and dummy_input")
    fixed = _load(masks)
    _fix_groups(fixed, model, dummy_input)
    _fix_channels(fixed, model, dummy_input)
    return fixed

"""Mask conflicts between dependent layers, and how they are resolved (NNI's ``fix_mask_conflict``).

Layers whose channels meet (a residual add, a shared input) must prune the same channels, and a
grouped conv's producer must prune the same count in every group; masks computed layer by layer
break both. :func:`unify_channels` gives every member of a dependency set the union of the set's
kept channels; :func:`equalize_groups` unprunes channels until every group prunes as many as the
least-pruned one (whole pruned groups of the coarser grouping stay pruned).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from purecompress.pruning._records import Mask, Masks

__all__ = [
    "channel_keep",
    "channel_mask",
    "channel_sparsity",
    "equalize_groups",
    "is_channel_mask",
    "unify_channels",
]


def channel_keep(mask: Mask, dim: int = 0) -> Tensor:
    """``[C]`` bool: channel ``c`` along ``dim`` is kept when any of its elements is.

    >>> m = Mask.from_dense(torch.tensor([[1., 0.], [0., 0.], [0., 1.]]))
    >>> channel_keep(m, 0).tolist(), channel_keep(m, 1).tolist()
    ([True, False, True], [True, True])
    """
    if not 0 <= dim < len(mask.shape):
        raise ValueError(f"dim {dim} is out of range for a mask of shape {mask.shape}")
    keep = mask.keep.any(dim=[d for d in range(mask.keep.dim()) if d != dim]) if mask.keep.dim() > 1 else mask.keep
    keep = keep.reshape(-1).expand(mask.keep.shape[dim]) if keep.numel() == 1 else keep.reshape(-1)
    return keep.repeat_interleave(mask.shape[dim] // keep.numel())


def channel_mask(keep: Tensor, shape: Sequence[int], dim: int = 0) -> Mask:
    """The mask of ``shape`` keeping the channels ``keep`` (``[shape[dim]]`` bool) along ``dim``.

    >>> channel_mask(torch.tensor([True, False]), (2, 3)).to_dense().tolist()
    [[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]
    """
    shape = tuple(int(n) for n in shape)
    if keep.shape != (shape[dim],):
        raise ValueError(f"{tuple(keep.shape)} channel flags for dim {dim} of a mask of shape {shape}")
    grid = [shape[dim] if d == dim else 1 for d in range(len(shape))]
    return Mask(keep.to(torch.bool).reshape(grid), shape)


def is_channel_mask(mask: Mask, dim: int = 0) -> bool:
    r"""Whether ``mask`` keeps or prunes whole channels along ``dim`` (no finer pattern inside).

    >>> is_channel_mask(Mask.from_dense(torch.tensor([[1., 1.], [0., 0.]]))), \
    ...     is_channel_mask(Mask.from_dense(torch.tensor([[1., 0.], [0., 0.]])))
    (True, False)
    """
    return bool(torch.equal(channel_mask(channel_keep(mask, dim), mask.shape, dim).to_dense(), mask.to_dense()))


def channel_sparsity(mask: Mask, dim: int = 0) -> float:
    """Fraction of the channels along ``dim`` that are pruned entirely."""
    keep = channel_keep(mask, dim)
    return 1.0 - float(keep.sum()) / keep.numel()


def unify_channels(masks: Mapping[str, Mask], channel_sets: Sequence[Sequence[str]], *, dim: int = 0) -> Masks:
    """Give every member of each set the union of the set's kept channels along ``dim``.

    Args:
        masks: parameter name -> mask (a member without a mask is dense: the set keeps every channel).
        channel_sets: sets of parameter names whose channels along ``dim`` must agree (for a 1-D
            member, such as a norm's weight or a bias, the channel dim is 0).
        dim: the channel dim (0: output channels; 1: input channels).

    Returns:
        A new dict: ``masks`` with each set's members replaced by channel masks. Fine-grained masks
        inside a set become channel masks (NNI's rule).

    >>> a = Mask.from_dense(torch.tensor([[1.], [0.], [0.]]))
    >>> b = Mask.from_dense(torch.tensor([[0.], [0.], [1.]]))
    >>> out = unify_channels({'a.weight': a, 'b.weight': b}, [('a.weight', 'b.weight')])
    >>> channel_keep(out['a.weight']).tolist(), channel_keep(out['b.weight']).tolist()
    ([True, False, True], [True, False, True])
    """
    out = dict(masks)
    for members in channel_sets:
        present = [m for m in members if m in masks]
        if len(members) < 2 or not present:
            continue
        axis = {m: dim if len(masks[m].shape) > dim else 0 for m in present}
        keeps = [channel_keep(masks[m], axis[m]) for m in present]
        if len({k.numel() for k in keeps}) > 1:
            raise ValueError(f"the members of {tuple(members)} have different channel counts "
                             f"{[k.numel() for k in keeps]} along dim {dim}")
        union = torch.stack(keeps).any(0)
        if len(present) < len(members):  # a dense member keeps every channel
            union = torch.ones_like(union)
        for m in present:
            out[m] = channel_mask(union, masks[m].shape, axis[m])
    return out


def equalize_groups(keep: Tensor, groups: int, whole_groups: int = 1) -> Tensor:
    """Unprune channels so every one of ``groups`` contiguous groups prunes as many as the least
    pruned one (NNI's ``GroupMaskConflict``); channels of a group of the ``whole_groups`` grouping
    that is pruned entirely stay pruned.

    Args:
        keep: ``[C]`` bool, the kept channels.
        groups: the group count the channels must stay divisible by (``C % groups == 0``).
        whole_groups: the coarser grouping whose fully pruned groups are kept pruned.

    >>> equalize_groups(torch.tensor([False, False, True, True, False, True]), 2).tolist()
    [False, True, True, True, False, True]
    """
    channels = keep.numel()
    if groups < 1 or channels % groups:
        raise ValueError(f"{channels} channels cannot be split into {groups} groups")
    pruned = [int(i) for i in torch.nonzero(~keep).flatten()]
    step = channels / groups
    per_group = [[i for i in pruned if step * g <= i < step * (g + 1)] for g in range(groups)]
    fewest = min(len(p) for p in per_group)
    unprune = {i for p in per_group for i in p[fewest:]}
    if whole_groups >= 1 and channels % whole_groups == 0:
        whole = channels / whole_groups
        for g in range(whole_groups):
            members = [i for i in pruned if whole * g <= i < whole * (g + 1)]
            if len(members) == whole:
                unprune -= set(members)
    out = keep.clone()
    if unprune:
        out[sorted(unprune)] = True
    return out

"""Data-driven statistics and masks under ``torch.distributed``: one answer on every rank.

Under DDP each rank sees its own shard of the data, so rank-local activation or Taylor
statistics (and the masks computed from them) differ between ranks. :func:`all_reduce_stats`
sums the statistics' sums and counts over the ranks, so every rank holds what one process
would have collected on the union of the shards; :func:`broadcast_masks` copies rank ``src``'s
masks to every rank, a safety net for metrics that are rank-local by nature.

Both take a record, a tensor or a (nested) mapping of them, return new objects (the inputs are
cloned, never reduced in place), pack everything into one buffer (one collective), and first
check that every rank holds the same structure, so a mismatch raises the same clear error on
every rank instead of hanging. Without an initialised process group both return their input.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal, TypeAlias, TypeVar

import attrs
import torch
import torch.distributed as dist
from torch import Tensor

from purecompress.pruning._stats import ActivationStats, TaylorStats

__all__ = [
    "Sync",
    "all_reduce_stats",
    "broadcast_masks",
    "is_distributed",
    "resolve_sync",
]


if TYPE_CHECKING:
    from torch.distributed import ProcessGroup


T = TypeVar("T")


#: ``'auto'`` (reduce when a process group is initialised), True (must be), False (rank-local),
#: or the ``ProcessGroup`` to reduce over.
Sync: TypeAlias = "bool | ProcessGroup | Literal['auto']"


Path = tuple[str, ...]



def is_distributed() -> bool:
    """True when ``torch.distributed`` is available and a default process group is initialised.

    >>> is_distributed()
    False
    """
    return dist.is_available() and dist.is_initialized()



def resolve_sync(sync: Sync) -> tuple[bool, ProcessGroup | None]:
    """``(reduce?, group)`` for a collector's ``sync`` option.

    Args:
        sync: ``'auto'``: reduce when :func:`is_distributed`; ``True``: reduce (a process group
            must be initialised); ``False``: rank-local; a ``ProcessGroup``: reduce over it.

    >>> resolve_sync('auto'), resolve_sync(False)
    ((False, None), (False, None))
    """
    if isinstance(sync, str):
        if sync != "auto":
            raise ValueError(f"sync must be 'auto', True, False or a ProcessGroup, got {sync!r}")
        return is_distributed(), None
    if sync is False:
        return False, None
    if not is_distributed():
        raise RuntimeError("sync=True (or a process group) needs torch.distributed initialised: call "
                           "torch.distributed.init_process_group first, or pass sync=False / 'auto'")
    return True, None if sync is True else sync



def _count_fields(leaf: Any) -> tuple[str, ...]:
    table: dict[type, tuple[str, ...]] = {ActivationStats: ("samples", "batches"), TaylorStats: ("steps",)}
    if type(leaf) not in table:
        raise TypeError(f"all_reduce_stats sums tensors, ActivationStats and TaylorStats, not {type(leaf).__name__}")
    return table[type(leaf)]



def _flatten(tree: Any, path: Path = ()) -> list[tuple[Path, Any]]:
    if isinstance(tree, Mapping):
        return [item for key in sorted(tree, key=str) for item in _flatten(tree[key], (*path, str(key)))]
    return [(path, tree)]



def _rebuild(tree: Any, new: Mapping[Path, Any], path: Path = ()) -> Any:
    if isinstance(tree, Mapping):
        return {key: _rebuild(value, new, (*path, str(key))) for key, value in tree.items()}
    return new[path]



def _tensors_of(leaf: Any) -> dict[str, Tensor]:
    if isinstance(leaf, Tensor):
        return {"": leaf}
    if leaf is None:
        return {}
    if not attrs.has(type(leaf)):
        raise TypeError(f"expected a tensor, a record or a mapping of them, got {type(leaf).__name__}")
    values = {f.name: getattr(leaf, f.name) for f in attrs.fields(type(leaf))}
    return {name: value for name, value in values.items() if isinstance(value, Tensor)}



def _describe(path: Path, leaf: Any, tensors: Mapping[str, Tensor], counts: tuple[str, ...]) -> str:
    fixed = [] if leaf is None or isinstance(leaf, Tensor) else \
        [f"{f.name}={getattr(leaf, f.name)!r}" for f in attrs.fields(type(leaf))
         if f.name not in tensors and f.name not in counts]
    shapes = [f"{k}:{tuple(t.shape)}:{t.dtype}" for k, t in tensors.items()]
    return f"{'/'.join(path)}|{type(leaf).__name__}|{','.join(shapes)}|{','.join(fixed)}|{len(counts)}"



def _check_same(description: str, numel: int, device: torch.device, group: ProcessGroup | None) -> None:
    crc = zlib.crc32(description.encode())
    sig = torch.tensor([numel, crc, -numel, -crc], dtype=torch.int64, device=device)
    dist.all_reduce(sig, op=dist.ReduceOp.MAX, group=group)
    if int(sig[0]) != -int(sig[2]) or int(sig[1]) != -int(sig[3]):
        raise ValueError(f"rank {dist.get_rank()}: the ranks hold differently structured statistics or masks "
                         f"(this rank: {numel} numbers); every rank must collect the same targets, and every "
                         f"target must see data on every rank")



def _device_of(parts: list[tuple[Path, Any, dict[str, Tensor], tuple[str, ...]]]) -> torch.device:
    for _, _, tensors, _ in parts:
        for t in tensors.values():
            return t.device
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")



def _pack(parts: list[tuple[Path, Any, dict[str, Tensor], tuple[str, ...]]], device: torch.device) -> Tensor:
    chunks: list[Tensor] = []
    for _, leaf, tensors, counts in parts:
        chunks += [t.detach().reshape(-1).to(device=device, dtype=torch.float64) for t in tensors.values()]
        if counts:
            chunks.append(torch.tensor([float(getattr(leaf, c)) for c in counts], dtype=torch.float64, device=device))
    return torch.cat(chunks) if chunks else torch.zeros(0, dtype=torch.float64, device=device)



def _unpack(parts: list[tuple[Path, Any, dict[str, Tensor], tuple[str, ...]]], flat: Tensor) -> dict[Path, Any]:
    out: dict[Path, Any] = {}
    at = 0
    for path, leaf, tensors, counts in parts:
        new: dict[str, Any] = {}
        for name, t in tensors.items():
            new[name] = flat[at:at + t.numel()].reshape(t.shape).to(device=t.device, dtype=t.dtype)
            at += t.numel()
        for c in counts:
            new[c] = int(round(float(flat[at])))
            at += 1
        out[path] = leaf if leaf is None else new[""] if isinstance(leaf, Tensor) else attrs.evolve(leaf, **new)
    return out



def _collective(tree: Any, group: ProcessGroup | None, *, counted: bool, op: Any) -> Any:
    parts = []
    for path, leaf in _flatten(tree):
        tensors = _tensors_of(leaf)
        counts = _count_fields(leaf) if counted and not isinstance(leaf, Tensor) and leaf is not None else ()
        parts.append((path, leaf, tensors, counts))
    device = _device_of(parts)
    flat = _pack(parts, device)
    _check_same(";".join(_describe(p, leaf, t, c) for p, leaf, t, c in parts), flat.numel(), device, group)
    if flat.numel():
        op(flat)
    return _rebuild(tree, _unpack(parts, flat))



def all_reduce_stats(stats: T, *, group: ProcessGroup | None = None) -> T:
    """``stats`` with every sum and count summed over the ranks (a new object; the input is not reduced).

    Args:
        stats: an :class:`~purecompress.ActivationStats` or
            :class:`~purecompress.TaylorStats` record, a tensor (summed), or a nested
            mapping of them (e.g. ``collect_taylor``'s result). Every rank must hold the same keys
            and shapes. Sums are taken in float64 and cast back; counts (``samples``, ``batches``,
            ``steps``) are summed exactly; ``positions`` must agree.
        group: the process group (default: the world).

    Returns:
        The reduced copy, same structure; ``stats`` itself when no process group is initialised.

    >>> from purecompress import TaylorStats
    >>> s = {'w': TaylorStats(torch.ones(2), 1)}
    >>> all_reduce_stats(s) is s  # not distributed: unchanged
    True
    """
    if not is_distributed():
        return stats
    return _collective(stats, group, counted=True, op=lambda flat: dist.all_reduce(flat, group=group))



def broadcast_masks(masks: T, *, src: int = 0, group: ProcessGroup | None = None) -> T:
    """Rank ``src``'s masks on every rank (new objects).

    Args:
        masks: ``{name: Mask}`` (core), NNI's ``{module: {'weight': tensor, 'bias': tensor | None}}``,
            or any nested mapping of masks/tensors. Every rank must hold the same structure.
        src: the (global) rank whose masks win.
        group: the process group (default: the world).

    Returns:
        Masks equal to rank ``src``'s; ``masks`` itself when no process group is initialised.

    >>> from purecompress import Mask
    >>> m = {'w': Mask.dense((2, 3))}
    >>> broadcast_masks(m) is m
    True
    """
    if not is_distributed():
        return masks
    return _collective(masks, group, counted=False, op=lambda flat: dist.broadcast(flat, src=src, group=group))

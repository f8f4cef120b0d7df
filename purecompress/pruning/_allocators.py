"""Allocators: ``Metrics -> Masks``. How much to prune where (the *distribution*).

The kept-count rule is NNI's, defined once in :func:`kept_count`:
``numel - int(sparsity * numel)``. Ties are broken by index (the lower index is kept), so counts
are exact and results deterministic. NaN scores count as least important.

Sparsity as a tensor: every allocator also takes its sparsity (or threshold) as a 0-dim tensor, so
``torch.func.vmap`` can evaluate many sparsities at once (``vmap(lambda s: allocate_per_layer(m,
s))(torch.tensor([.25, .5, .75]))``); the kept count is then ``numel - floor(s * numel)``
computed in float64, the same number the float path gives for the same value, and top-k selection
ranks entries (a stable sort) instead of branching on data.

Continuous masking (``prior=``): blocks a prior mask pruned score below everything else and stay
pruned (the new mask is intersected with the prior), so re-pruning never un-prunes.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

import attrs
import torch
from torch import Tensor

from purecompress._pytree import is_traced
from purecompress.pruning._records import Block, Mask, Masks, Metric, Metrics, blocks_of, unblock

__all__ = [
    "ChannelRange",
    "ShuffleChain",
    "allocate_balanced",
    "allocate_dependency_aware",
    "allocate_global",
    "allocate_per_layer",
    "allocate_threshold",
    "bias_masks",
    "dependency_kept_count",
    "group_keep",
    "keep_top",
    "kept_count",
]


Sparsity = float | Tensor | Mapping[str, float | Tensor]



def kept_count(numel: int, sparsity: float | Tensor) -> int | Tensor:
    """NNI's rule: ``numel - int(sparsity * numel)`` (0.33 of 10 keeps 7).

    A tensor ``sparsity`` gives an int64 tensor, computed in float64 so that it equals the float
    path for the same value (and works under ``vmap``).

    >>> kept_count(10, 0.33)
    7
    >>> kept_count(10, torch.tensor([0.33, 0.5], dtype=torch.float64)).tolist()
    [7, 5]
    """
    if isinstance(sparsity, Tensor):
        if not is_traced(sparsity) and not bool(((sparsity >= 0) & (sparsity <= 1)).all()):
            raise ValueError(f"sparsity must be in [0, 1], got {sparsity}")
        return numel - torch.floor(sparsity.to(torch.float64) * numel).to(torch.int64)
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity must be in [0, 1], got {sparsity}")
    return numel - int(sparsity * numel)



def keep_top(score: Tensor, k: int | Tensor, dim: int = -1) -> Tensor:
    """Bool mask of the ``k`` largest entries along ``dim``; ties keep the lower index.

    Linear time (``kthvalue``), no ``.item()`` under transforms: usable under ``vmap`` and
    ``torch.compile``. NaN counts as the smallest value. Outside transforms, rows of at least 1024
    entries (a multiple of 256) along the last dim are selected by a sampled bracket and counts
    instead of a ``kthvalue`` per row (benchmarks/RESULTS.md: about 4x faster), with the same result.

    >>> keep_top(torch.tensor([1., 3., 3., 0.]), 2)
    tensor([False,  True,  True, False])
    >>> keep_top(torch.tensor([2., 2., 2.]), 2)
    tensor([ True,  True, False])
    """
    score = _as_float(score)
    if _rows_fast(score, k, dim):  # NaN handled inside: no full-size nan_to_num copy
        return _keep_top_rows(score, k)  # type: ignore[arg-type]
    return _keep_top(torch.nan_to_num(score, nan=-math.inf), k, dim)



def _as_float(score: Tensor) -> Tensor:
    """At least float32, never narrower than the input (float64 scores keep their precision)."""
    return score.to(torch.promote_types(score.dtype, torch.float32))


def _keep_top(score: Tensor, k: int | Tensor, dim: int) -> Tensor:
    """:func:`keep_top` for a float tensor without NaN (the row path also takes NaN)."""
    if isinstance(k, Tensor):
        return _keep_top_ranked(score, k, dim)
    n = score.shape[dim]
    if k >= n:
        return torch.ones_like(score, dtype=torch.bool)
    if k <= 0:
        return torch.zeros_like(score, dtype=torch.bool)
    if _rows_fast(score, k, dim):
        return _keep_top_rows(score, k)
    return _keep_top_kth(score, k, dim)


def _keep_top_kth(score: Tensor, k: int, dim: int) -> Tensor:
    """:func:`_keep_top` for ``0 < k < n`` by a ``kthvalue`` threshold and the tie rule (the exact
    path that :func:`_keep_top_rows` falls back to, and the one under transforms)."""
    n = score.shape[dim]
    if score.dim() == 1 and n > _SAMPLED_SELECT_MIN and not is_traced(score):
        threshold = _kth_smallest_sampled(score, n - k).reshape(1)
    else:
        threshold = torch.kthvalue(score, n - k, dim=dim, keepdim=True).values
    above = score > threshold
    count = above.sum(dim=dim, keepdim=True)
    if not is_traced(score) and bool((count == k).all()):  # no tie at the threshold: done
        return above
    tie = score == threshold
    return above | (tie & (tie.cumsum(dim) <= k - count))



def _keep_top_ranked(score: Tensor, k: Tensor, dim: int) -> Tensor:
    """:func:`_keep_top` for a tensor ``k`` (0-dim, or broadcastable against ``score`` reduced
    over ``dim``): the rank of each entry in a stable descending sort (ties: lower index first)
    compared with ``k``. No data-dependent branch, so ``vmap`` over ``k`` works."""
    order = torch.argsort(score, dim=dim, descending=True, stable=True)
    ranks = torch.argsort(order, dim=dim, stable=True)
    return ranks < (k.unsqueeze(dim) if k.dim() else k)


_SAMPLED_SELECT_MIN = 1 << 16


#: The bracketed row selection (:func:`_keep_top_rows`) runs for rows at least this long whose
#: length is a multiple of 256 (its bit-packed counts read a row as whole groups of 64 int32 words).
_ROWS_MIN = 1024
_ROWS_CHUNK = 512  # rows per chunk: bounds the bool scratch buffer
_ROWS_SAMPLE = 128  # sampled entries per row
_ROWS_Z = 3.0  # bracket half-width in standard deviations of the rank estimate
_ROWS_ROUNDS = 2  # count-only rounds that narrow the bracket before the band is extracted
_ROWS_BAND_MAX = 256  # rows whose final band holds more entries take the kthvalue path


def _rows_fast(score: Tensor, k: int | Tensor, dim: int) -> bool:
    """Whether :func:`_keep_top_rows` applies: an int ``k`` strictly inside ``(0, n)``, selection
    along the last dim of long rows, and no transform (it branches on data)."""
    if isinstance(k, Tensor) or score.dim() < 2 or dim not in (-1, score.dim() - 1):
        return False
    n = score.shape[-1]
    return (0 < k < n and n >= _ROWS_MIN and n % 256 == 0 and score.numel() > 0
            and score.dtype in (torch.float32, torch.float64) and not is_traced(score))


def _keep_top_rows(score: Tensor, k: int) -> Tensor:
    """:func:`keep_top` along the last dim of long rows (NaN allowed), in a few elementwise passes.

    The same mask as the ``kthvalue`` path, found without a selection over every row: per row a
    strided sample brackets the k-th largest value ``t``, two rounds of counting (``score > x`` at
    probes interpolated between the bracket's exact counts) narrow the bracket to a few dozen
    entries, only those entries are extracted and sorted, and the mask is ``score >= t``. A row
    falls back to ``kthvalue`` (exact, with the tie rule) when its bracket missed, its band stayed
    wide, or ``t`` is tied with an entry that must be dropped; the result never depends on luck.
    Costs about 4 passes over the scores on one thread, against about 9 for ``kthvalue`` alone
    (benchmarks/RESULTS.md).
    """
    shape = score.shape
    n = shape[-1]
    flat = score.reshape(-1, n)
    r = flat.shape[0]
    with torch.no_grad():
        out = torch.empty((r, n), dtype=torch.bool, device=score.device)
        buf = torch.empty((min(_ROWS_CHUNK, r), n), dtype=torch.bool, device=score.device)
        missed = []
        for r0 in range(0, r, _ROWS_CHUNK):
            r1 = min(r0 + _ROWS_CHUNK, r)
            rows = _keep_top_rows_chunk(flat[r0:r1], k, buf[: r1 - r0], out[r0:r1])
            if rows.numel():
                missed.append(rows + r0)
        if missed:
            rows = torch.cat(missed)
            out[rows] = _keep_top_kth(torch.nan_to_num(flat[rows], nan=-math.inf), k, -1)
    return out.reshape(shape)


def _count_above(score: Tensor, x: Tensor, buf: Tensor) -> Tensor:
    """``(score > x).sum(-1, keepdim=True)`` as int32, counted on the bool bytes packed four to an
    int32 word (64 words summed per lane, so no byte lane overflows): bool sums upcast to int64
    and cost as much as the comparison itself."""
    torch.gt(score, x, out=buf)
    words = buf.view(torch.int32).view(buf.shape[0], -1, 64).sum(-1, dtype=torch.int32)
    lanes = (words & 0xFF) + ((words >> 8) & 0xFF) + ((words >> 16) & 0xFF) + ((words >> 24) & 0xFF)
    return lanes.sum(-1, keepdim=True, dtype=torch.int32)


def _row_bracket(score: Tensor, k: int, buf: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per row ``lo, hi`` with exact ``above_lo = #(score > lo)`` and ``above_hi = #(score > hi)``;
    the k-th largest lies in ``(lo, hi]`` exactly when ``above_hi < k <= above_lo``."""
    r, n = score.shape
    sample = torch.nan_to_num(score[:, :: max(1, n // _ROWS_SAMPLE)], nan=-math.inf)
    m = sample.shape[1]
    p = (n - k) / n
    pos = (n - k + 0.5) / n * m - 0.5  # the k-th largest's position in the ascending sample
    margin = _ROWS_Z * math.sqrt(m * p * (1 - p)) + 1.0
    first, last = math.floor(pos - margin), math.ceil(pos + margin)
    lo = (torch.kthvalue(sample, first + 1, -1, keepdim=True).values if first >= 0
          else sample.new_full((r, 1), -math.inf))
    hi = (torch.kthvalue(sample, last + 1, -1, keepdim=True).values if last < m
          else sample.new_full((r, 1), math.inf))
    above_lo, above_hi = _count_above(score, lo, buf), _count_above(score, hi, buf)
    for _ in range(_ROWS_ROUNDS):
        band = (above_lo - above_hi).clamp_min(1).to(score.dtype)
        rank = (k - above_hi).to(score.dtype)  # of the k-th largest inside the band, from the top
        f = (rank / band).clamp(0, 1)
        half = _ROWS_Z * torch.sqrt(band * f * (1 - f)) + 1.0
        width = hi - lo
        for frac in ((rank - 0.5 + half) / band, (rank - 0.5 - half) / band):
            x = hi - frac.clamp(0, 1) * width  # linear in the counts between lo and hi
            x = torch.where(torch.isfinite(x), x, hi)  # an infinite end: no probe (never NaN)
            count = _count_above(score, x, buf)
            lower = count >= k  # x < t; otherwise t <= x: every probe tightens one side exactly
            raise_lo, cut_hi = lower & (x > lo), ~lower & (x < hi)
            lo, above_lo = torch.where(raise_lo, x, lo), torch.where(raise_lo, count, above_lo)
            hi, above_hi = torch.where(cut_hi, x, hi), torch.where(cut_hi, count, above_hi)
    return lo, hi, above_lo, above_hi


def _keep_top_rows_chunk(score: Tensor, k: int, buf: Tensor, out: Tensor) -> Tensor:
    """Write the mask of a chunk of rows into ``out``; return the rows left for the fallback."""
    r = score.shape[0]
    lo, hi, above_lo, above_hi = _row_bracket(score, k, buf)
    ok = (above_hi < k) & (k <= above_lo) & (above_lo - above_hi <= _ROWS_BAND_MAX)
    counts = torch.where(ok, above_lo - above_hi, 0)[:, 0]
    torch.gt(score, torch.where(ok, lo, hi), out=buf)  # an empty band for the rows that missed
    buf &= score <= hi
    values = score[buf]  # row-major: each row's band entries, in order
    width = max(int(counts.max()), 1)
    band = score.new_full((r, width), -math.inf)
    row = torch.repeat_interleave(torch.arange(r, device=score.device), counts)
    start = torch.cumsum(counts, 0) - counts
    band[row, torch.arange(values.numel(), device=score.device) - start[row]] = values
    band = torch.sort(band, -1, descending=True).values
    t = band.gather(1, (k - above_hi).clamp(1, width).long() - 1)
    above = above_hi + (band > t).sum(-1, keepdim=True)
    tied = (band == t).sum(-1, keepdim=True)
    ok &= above + tied == k  # otherwise some entry equal to t is dropped: the tie rule decides
    torch.ge(score, t, out=out)  # NaN compares False: never kept on these rows
    return (~ok[:, 0]).nonzero()[:, 0]



def _kth_smallest_sampled(score: Tensor, rank: int) -> Tensor:
    """``torch.kthvalue(score, rank).values`` for a large 1-D tensor, about 3x faster.

    A strided sample brackets the answer; only the values inside the bracket go through
    ``kthvalue``. The result is exact: when the bracket misses (adversarial layouts), the full
    ``kthvalue`` runs instead.
    """
    n = score.numel()
    sample = torch.sort(score[:: max(1, n // 16384)]).values
    m = sample.numel()
    pos = rank / n * m
    margin = 4.0 * math.sqrt(m) + 8
    lo = sample[max(int(pos - margin), 0)]
    hi = sample[min(int(pos + margin), m - 1)]
    below = int((score < lo).sum())
    inside = score[(score >= lo) & (score <= hi)]
    if below < rank <= below + inside.numel():
        return torch.kthvalue(inside, rank - below).values
    return torch.kthvalue(score, rank).values



def _sparsity_for(sparsity: Sparsity, name: str) -> float | Tensor:
    value = sparsity
    if isinstance(sparsity, Mapping):
        if name not in sparsity:
            raise KeyError(f"no sparsity given for {name!r}")
        value = sparsity[name]
    if isinstance(value, Tensor):
        if value.dim() != 0:
            raise ValueError(f"a tensor sparsity must be 0-dim (vmap over a 1-D tensor for several), got "
                             f"shape {tuple(value.shape)} for {name!r}")
        return value
    return float(value)  # type: ignore[arg-type]



def _prior_keep(prior: Masks | None, name: str, metric: Metric) -> Tensor | None:
    """The prior mask of ``name`` on the metric's grid: a block counts kept if any element is."""
    if not prior or name not in prior:
        return None
    mask = prior[name]
    if mask.shape != metric.shape:
        raise ValueError(f"prior mask of {name!r} has shape {mask.shape}, the metric {metric.shape}")
    grid = tuple(metric.score.shape)
    if tuple(mask.keep.shape) == grid:
        return mask.keep
    return blocks_of(mask.broadcastable().expand(mask.shape), grid).any(-1)



def _scores(metrics: Metrics, prior: Masks | None) -> dict[str, Tensor]:
    """Scores with NaN -> -inf and, under continuous masking, prior-pruned blocks at -inf."""
    out = {}
    for name, metric in metrics.items():
        score = torch.nan_to_num(_as_float(metric.score), nan=-math.inf)
        keep = _prior_keep(prior, name, metric)
        out[name] = score if keep is None else score.masked_fill(~keep, -math.inf)
    return out



def _finish(masks: Masks, prior: Masks | None) -> Masks:
    if not prior:
        return masks
    return {name: mask & prior[name] if name in prior else mask for name, mask in masks.items()}



def allocate_per_layer(metrics: Metrics, sparsity: Sparsity, *, prior: Masks | None = None) -> Masks:
    """Prune ``sparsity`` of the blocks of each layer, lowest scores first.

    Args:
        metrics: name -> :class:`Metric`.
        sparsity: one fraction for all, or name -> fraction.
        prior: masks already applied (continuous masking).

    >>> m = {'w': Metric(torch.tensor([[4.], [1.], [3.], [2.]]), (4, 2))}
    >>> allocate_per_layer(m, 0.5)['w'].keep.flatten()
    tensor([ True, False,  True, False])
    """
    scores = _scores(metrics, prior)
    masks = {}
    for name, metric in metrics.items():
        flat = scores[name].reshape(-1)
        keep = _keep_top(flat, kept_count(flat.numel(), _sparsity_for(sparsity, name)), -1)
        masks[name] = Mask(keep.reshape(metric.score.shape), metric.shape)
    return _finish(masks, prior)



def allocate_global(metrics: Metrics, sparsity: float | Tensor, *, max_sparsity: Sparsity = 0.99,
                    prior: Masks | None = None, below_target: bool = False) -> Masks:
    """Pool all layers and prune ``sparsity`` of all their elements, lowest scores first.

    Each block weighs its element count. Each layer's top ``kept_count(blocks, cap)`` blocks are
    protected (``max_sparsity``, default 0.99 as NNI). Blocks are pruned in ascending score order
    until at least ``int(sparsity * N)`` elements are pruned: exactly that many at element
    granularity, at most one block more otherwise (NNI's threshold rule, without its over-pruning
    on ties). With ``below_target`` only the blocks that end strictly below ``int(sparsity * N)``
    pruned elements are pruned (NNI 1.x's ``global_sort``: scores strictly below the target's).

    >>> m = {'a': Metric(torch.tensor([[1.], [2.]]), (2, 2)), 'b': Metric(torch.tensor([[3.], [4.]]), (2, 3))}
    >>> [allocate_global(m, 0.5, max_sparsity=1.0, below_target=b)['b'].keep.flatten().tolist() for b in (False, True)]
    [[False, True], [True, True]]
    """
    if not metrics:
        return {}
    scores = _scores(metrics, prior)
    names = list(metrics)
    flat, sizes = [], []
    for name in names:
        s = scores[name].reshape(-1)
        cap = max_sparsity.get(name, 0.99) if isinstance(max_sparsity, Mapping) else max_sparsity
        protected = _keep_top(s, kept_count(s.numel(), cap), -1)
        flat.append(s.masked_fill(protected, math.inf))
        sizes.append(metrics[name].block_numel)
    score = torch.cat(flat)
    size = torch.cat([torch.full((f.numel(),), b, dtype=torch.long) for f, b in zip(flat, sizes)])
    if isinstance(sparsity, Tensor) or is_traced(score):  # no data-dependent int under transforms
        if below_target:
            raise ValueError("below_target needs a float sparsity (not a tensor, not under a transform)")
        keep = _global_keep_ranked(score, size, torch.as_tensor(sparsity, dtype=torch.float64))
    elif len(set(sizes)) == 1 and not below_target:
        n = min(int(sparsity * int(size.sum())), int(size[score != math.inf].sum()))
        keep = _keep_top(score, score.numel() - math.ceil(n / sizes[0]), -1)
    else:
        n = min(int(sparsity * int(size.sum())), int(size[score != math.inf].sum()))
        order = torch.sort(score, descending=True, stable=True).indices
        after = size[order].flip(0).cumsum(0).flip(0) - size[order]  # elements ranked below each
        keep = torch.empty_like(score, dtype=torch.bool)
        keep[order] = after + size[order] >= n if below_target else after >= n
    masks, start = {}, 0
    for name, f in zip(names, flat):
        masks[name] = Mask(keep[start:start + f.numel()].reshape(metrics[name].score.shape),
                           metrics[name].shape)
        start += f.numel()
    return _finish(masks, prior)



def _global_keep_ranked(score: Tensor, size: Tensor, sparsity: Tensor) -> Tensor:
    """The pooled selection of :func:`allocate_global` for a tensor sparsity (vmap-able): blocks in
    descending score order are kept while the elements ranked below them still reach the pruning
    target ``min(floor(s * N), unprotected elements)``."""
    if not is_traced(sparsity) and not bool((sparsity >= 0) & (sparsity <= 1)):
        raise ValueError(f"sparsity must be in [0, 1], got {sparsity}")
    total = size.sum()
    target = torch.floor(sparsity.to(torch.float64) * total).to(torch.int64)
    n = torch.minimum(target, size.masked_fill(score == math.inf, 0).sum())
    order = torch.argsort(score, descending=True, stable=True)
    ranked = size.gather(0, order)
    after = ranked.flip(0).cumsum(0).flip(0) - ranked  # elements ranked below each block
    return (after >= n).gather(0, torch.argsort(order, stable=True))


def allocate_balanced(metrics: Metrics, sparsity: Sparsity, *, gran: Sequence[int],
                      prior: Masks | None = None) -> Masks:
    """Prune the same fraction inside every bank of shape ``gran`` (NNI's bank/balance mode).

    ``gran`` is front-padded with 1 to the metric's rank; each bank keeps
    ``kept_count(bank_numel, sparsity)`` of its entries (0.7 of banks of 5 prunes exactly 0.6).
    """
    if any(not isinstance(g, int) or g <= 0 for g in gran):
        raise ValueError(f"balance_gran must be positive ints, got {list(gran)}")
    scores = _scores(metrics, prior)
    masks = {}
    for name, metric in metrics.items():
        grid = tuple(metric.score.shape)
        if len(gran) > len(grid):
            raise ValueError(f"balance_gran {list(gran)} has more dims than the metric of {name!r} {grid}")
        bank = Block(tuple(gran))
        try:
            banks_grid = bank.grid(grid)
        except ValueError as err:
            raise ValueError(f"{name!r}: metric of shape {grid} is not aligned with balance_gran "
                             f"{list(gran)}") from err
        banks = blocks_of(scores[name], banks_grid)
        keep = _keep_top(banks, kept_count(banks.shape[-1], _sparsity_for(sparsity, name)), -1)
        masks[name] = Mask(unblock(keep, grid), metric.shape)
    return _finish(masks, prior)



def allocate_threshold(metrics: Metrics, threshold: Sparsity, *, squash: Literal["sigmoid"] | None = None,
                       prior: Masks | None = None) -> Masks:
    """Keep the blocks whose score (``sigmoid(score)`` with ``squash='sigmoid'``) is strictly above
    ``threshold`` (a float, a 0-dim tensor, or per name).

    ``squash='sigmoid'`` is NNI's threshold rule for movement scores (its soft movement mode and
    experimental ``ThresholdSparsityAllocator`` compare ``sigmoid(score)`` with the configured
    sparsity). NaN scores are never kept.

    >>> m = {'w': Metric(torch.tensor([0.0, 1.0, -1.0]), (3,))}
    >>> allocate_threshold(m, 0.5)['w'].keep.tolist()
    [False, True, False]
    >>> allocate_threshold(m, 0.6, squash='sigmoid')['w'].keep.tolist()  # sigmoid: 0.5, 0.73, 0.27
    [False, True, False]
    """
    if squash not in (None, "sigmoid"):
        raise ValueError(f"squash must be None or 'sigmoid', got {squash!r}")
    scores = _scores(metrics, prior)
    if squash == "sigmoid":
        scores = {name: torch.sigmoid(score) for name, score in scores.items()}
    masks = {name: Mask(scores[name] > _sparsity_for(threshold, name), m.shape) for name, m in metrics.items()}
    return _finish(masks, prior)



def bias_masks(masks: Masks, shapes: Mapping[str, tuple[int, ...]]) -> Masks:
    """Masks for biases from weight masks (NNI's rule), added to a copy of ``masks``.

    For each ``'<module>.weight'`` mask whose ``'<module>.bias'`` is in ``shapes`` with
    ``bias.shape[0] == weight.shape[0]``: bias ``i`` is kept iff any weight entry of row ``i`` is.
    Fine-grained masks thus leave the bias dense; channel masks prune the pruned channels' biases.
    """
    out = dict(masks)
    for name, mask in masks.items():
        if name != "weight" and not name.endswith(".weight"):
            continue
        bias = name[: -len("weight")] + "bias"
        if bias not in shapes or len(shapes[bias]) != 1 or not mask.shape or shapes[bias][0] != mask.shape[0]:
            continue
        rows = mask.keep.reshape(mask.keep.shape[0], -1).any(-1).repeat_interleave(mask.block[0])
        out[bias] = Mask(rows, shapes[bias])
    return out



def group_keep(score: Tensor, sparsity: float | Tensor, groups: int = 1) -> Tensor:
    """Keep the same number of the best channels in each of ``groups`` contiguous blocks.

    Args:
        score: ``[C]`` channel scores.
        sparsity: fraction pruned in each block.
        groups: number of blocks; channels past ``groups * (C // groups)`` are kept (NNI).

    >>> group_keep(torch.tensor([1., 4., 3., 2.]), 0.5, 2).tolist()
    [False, True, True, False]
    """
    c = score.shape[0]
    step = c // groups
    if step == 0:
        return torch.ones(c, dtype=torch.bool, device=score.device)
    blocks = score[: step * groups].reshape(groups, step)
    kept = keep_top(blocks, kept_count(step, sparsity), dim=-1).reshape(-1)
    tail = torch.ones(c - step * groups, dtype=torch.bool, device=score.device)
    return torch.cat([kept, tail])



@attrs.frozen
class ChannelRange:
    """The output channels ``range(start, stop, step)`` of one layer: a member of a dependency set
    of channel ranges (:func:`~purecompress.graph.channel_ranges`), where channel ``i`` of every
    range of the set shares one mask.

    Attributes:
        name: module name of the layer (``'features.3.conv.0'``).
        start, stop, step: the channels, as Python's ``range`` (``step > 0``).
        blocked: None, or why shrinking keeps these channels whatever the masks say (an op of the
            forward blocks them); :func:`allocate_dependency_aware` keeps them.

    >>> r = ChannelRange('conv', 1, 8, 2)
    >>> list(r.indices()), len(r)
    ([1, 3, 5, 7], 4)
    """

    name: str
    start: int
    stop: int
    step: int = 1
    blocked: str | None = None

    def indices(self) -> range:
        """The channel indices, in order."""
        return range(self.start, self.stop, self.step)

    def __len__(self) -> int:
        return len(self.indices())


@attrs.frozen
class ShuffleChain:
    """Layers whose output channels a chain of ShuffleNetV2 units interleaves
    (:func:`~purecompress.graph.shuffle_chains`): the first unit shuffles ``cat([a, b])`` of two
    layers' outputs, each later one ``cat([x1, c])``, ``x1`` the first ``chunk`` half of the previous
    unit's output and ``c`` a layer's output (``shuffle``: ``view(n, 2, C // 2, ...)``,
    ``transpose(1, 2)``, ``view(n, C, ...)``). :func:`~purecompress.shrink` takes masks where the
    ``r``-th kept channel of ``x1`` (or ``a``) comes at or before that of ``c`` (or ``b``) and before
    the next one of ``x1``, and the halves of each chunk keep as many: the masks
    :func:`allocate_dependency_aware` gives the chain.

    Attributes:
        layers: the module names: the first unit's two layers, then one per later unit.
        width: their output channel count (each unit's output has ``2 * width`` channels).
        followers: depthwise layers reading the last unit's output: their channel ``m`` is its
            channel ``m``.
    """

    layers: tuple[str, ...]
    width: int
    followers: tuple[str, ...] = ()


def _ceil_half(x: int) -> int:
    return -(-x // 2)


def _chain_requirements(units: int, width: int, n: int) -> tuple[set[tuple[int, int]], list[set[tuple[int, int]]]]:
    """Prefix counts ``(t, c)`` (``c`` channels kept below channel ``t``) that the first layer, and
    each unit's other layer, must meet for every chunk half of a unit's output to keep ``n``.

    A unit's output interleaves ``A`` (even positions) and ``B`` (odd) in order, so ``c`` kept
    below ``t`` needs ``ceil(c / 2)`` of ``A`` below ``ceil(t / 2)``, the rest of ``B`` below
    ``t // 2``, and room for that ``B`` channel on its side of ``t`` (the second count on ``A``);
    ``A`` is the previous output's first half, so its counts are that output's.
    """
    need = [{(width, n)} if k < units - 1 else set() for k in range(units)]  # on unit k's output
    other: list[set[tuple[int, int]]] = [set() for _ in range(units)]
    first = {(width, n)}
    for k in range(units - 1, -1, -1):
        below = need[k - 1] if k else first
        for t, c in need[k]:
            a = _ceil_half(c)
            below |= {(_ceil_half(t), a), (t // 2 + c % 2, a)}
            other[k].add((t // 2, c - a))
    return first, other


def _chain_keep(scores: Sequence[Tensor], width: int, n: int) -> tuple[list[list[int]], list[int]] | None:
    """The kept channels of each layer of a chain (``scores``: per layer, ``[width]``), ``n`` each,
    the best by score wherever the prefix counts leave a choice, and the kept channels of the last
    unit's output; None when no choice meets the counts."""
    first_req, other_req = _chain_requirements(len(scores) - 1, width, n)
    first: list[int] = []
    start = done = 0
    for t, c in sorted(first_req):
        if c < done or c - done > t - start or (t == start and c != done):
            return None
        best = sorted(range(start, t), key=lambda i: (-float(scores[0][i]), i))[: c - done]
        first.extend(sorted(best))
        start, done = t, c
    kept, a = [first], first
    for k, score in enumerate(scores[1:]):
        # the r-th channel of B lies in [A[r], A[r + 1]) (in order), narrowed by its prefix counts
        slots = [[a[r], a[r + 1] if r + 1 < len(a) else width] for r in range(len(a))]
        for x, c in other_req[k]:
            if not 0 <= c <= len(a):
                return None
            if c > 0:
                slots[c - 1][1] = min(slots[c - 1][1], x)
            if c < len(a):
                slots[c][0] = max(slots[c][0], x)
        if any(lo >= hi for lo, hi in slots):
            return None
        b = [max(range(lo, hi), key=lambda i: (float(score[i]), -i)) for lo, hi in slots]
        kept.append(b)
        out = sorted([2 * i for i in a] + [2 * i + 1 for i in b])
        a = [i for i in out if i < width]
        if k < len(scores) - 2 and len(a) != n:
            return None
    return kept, out


def _chain_masks(metrics: Metrics, scores: Mapping[str, Tensor], sparsity: Sparsity,
                 chains: Sequence[ShuffleChain]) -> Masks:
    """:func:`allocate_dependency_aware` for the layers (and followers) of shuffle chains."""
    masks: Masks = {}
    for chain in chains:
        keys = [_key(metrics, name) for name in (*chain.layers, *chain.followers)]
        if any(k is None for k in keys) or len(chain.layers) < 2:
            continue  # a layer not pruned: the chain keeps what its dependency sets say
        known = [k for k in keys if k is not None]
        sizes = [chain.width] * len(chain.layers) + [2 * chain.width] * len(chain.followers)
        for k, size in zip(known, sizes):
            if tuple(metrics[k].score.shape) != (size, *[1] * (metrics[k].score.dim() - 1)):
                raise ValueError(f"shuffle chain layer {k!r} needs a channel metric of {size} channels; it has grid "
                                 f"{tuple(metrics[k].score.shape)}")
        s = functools.reduce(_smaller, (_sparsity_for(sparsity, k) for k in known))
        if isinstance(s, Tensor) and is_traced(s):
            continue  # the count must be known: under vmap the sets decide
        layer_scores = [scores[k].reshape(-1) for k in known[: len(chain.layers)]]
        found = next((r for n in range(int(kept_count(chain.width, s)), 0, -1)
                      if (r := _chain_keep(layer_scores, chain.width, n)) is not None), None)
        if found is None:
            continue
        kept, out = found
        for k, size, channels in zip(known, sizes, [*kept, *[out] * len(chain.followers)]):
            keep = torch.zeros(size, dtype=torch.bool, device=scores[k].device)
            keep[torch.tensor(channels, dtype=torch.long, device=keep.device)] = True
            masks[k] = Mask(keep.reshape(metrics[k].score.shape), metrics[k].shape)
    return masks


def _key(metrics: Metrics, member: str) -> str | None:
    for name in (member, f"{member}.weight"):
        if name in metrics:
            return name
    return None



def allocate_dependency_aware(
    metrics: Metrics,
    sparsity: Sparsity,
    *,
    channel_sets: Iterable[Sequence[str] | Sequence[ChannelRange]],
    groups: Mapping[str, int] | None = None,
    prior: Masks | None = None,
    shuffles: Iterable[ShuffleChain] = (),
) -> Masks:
    """Channel masks that agree inside each dependency set (NNI's dependency-aware mode).

    Args:
        metrics: channel metrics (grid ``[C, 1, ...]``) keyed by parameter name.
        sparsity: one fraction, or parameter name -> fraction.
        channel_sets: sets of module names (or parameter names) that must share channels, or
            sets of :class:`ChannelRange` (from :func:`~purecompress.graph.channel_ranges`) of one
            length each: channel ``i`` of every range in a set shares one mask, and the ranges of
            a layer must cover each of its channels once; a set with a ``blocked`` range is kept.
            Names not in ``metrics`` are ignored.
        groups: module name -> the count its channels must stay divisible by (default 1); for a
            set of ranges, only when every range is a whole layer.
        prior: masks already applied (continuous masking).
        shuffles: chains of ShuffleNetV2 units (:func:`~purecompress.graph.shuffle_chains`),
            decided instead of the sets that hold their layers.

    Returns:
        Masks at channel granularity for every metric. A set of ranges of length ``n`` keeps the
        ``kept_count(n, s)`` channels of the best summed scores in each of its ranges, so every
        layer keeps the asked fraction of each of its ranges. The layers of a shuffle chain keep
        ``n`` channels each, the largest ``n <= kept_count(width, s)`` for which channels meeting
        the chain's order and counts are found (where the sets would join channel ``j`` of each
        shuffle group: deep in a chain, a whole layer), by their own scores; its followers keep
        the last output's channels. A chain with a layer not in ``metrics`` is left to the sets.

    Raises:
        ValueError: a set mixes names and ranges, its ranges differ in length or leave the layer,
            a layer's ranges do not cover its channels once, or a metric is not per channel.

    >>> from purecompress import Metric
    >>> m = {'a.weight': Metric(torch.tensor([[3.], [0.], [1.], [2.]]), (4, 2)),
    ...      'b.weight': Metric(torch.tensor([[0.], [1.], [0.], [3.]]), (4, 2))}
    >>> masks = allocate_dependency_aware(m, 0.5, channel_sets=[('a', 'b')])
    >>> masks['a.weight'].keep.flatten().tolist(), masks['b.weight'].keep.flatten().tolist()
    ([True, False, False, True], [True, False, False, True])
    """
    groups = dict(groups or {})
    scores = _scores(metrics, prior)
    masks: Masks = {}
    ranged: list[tuple[ChannelRange, ...]] = []
    named: list[tuple[str, ...]] = []
    for members in map(tuple, channel_sets):
        if all(isinstance(x, ChannelRange) for x in members):
            ranged.append(members)  # type: ignore[arg-type]
        elif any(isinstance(x, ChannelRange) for x in members):
            raise ValueError(f"a dependency set holds both names and ChannelRange members: {list(members)}")
        else:
            named.append(members)  # type: ignore[arg-type]
    masks.update(_range_masks(metrics, scores, sparsity, ranged, groups))
    masks.update(_chain_masks(metrics, scores, sparsity, list(shuffles)))
    for members in named:
        found = [(m, _key(metrics, m)) for m in members]
        keyed = [(m, k) for m, k in found if k is not None and k not in masks]
        if not keyed:
            continue
        for _, k in keyed:
            grid = tuple(metrics[k].score.shape)
            if any(g != 1 for g in grid[1:]):
                raise ValueError(f"dependency-aware allocation needs channel metrics; {k!r} has grid {grid}")
        channels = {metrics[k].score.shape[0] for _, k in keyed}
        if len(channels) != 1:
            raise ValueError(f"dependency set {[k for _, k in keyed]} has different channel counts {sorted(channels)}")
        fused = torch.stack([scores[k].reshape(-1) for _, k in keyed]).sum(0)
        s = functools.reduce(_smaller, (_sparsity_for(sparsity, k) for _, k in keyed))
        lcm = math.lcm(*(int(groups.get(m, groups.get(k, 1))) for m, k in keyed))
        keep = group_keep(fused, s, lcm)
        for _, k in keyed:
            masks[k] = Mask(keep.reshape(metrics[k].score.shape), metrics[k].shape)
    rest = {k: metrics[k] for k in metrics if k not in masks}
    if rest:
        rest_sparsity = sparsity if not isinstance(sparsity, Mapping) else {k: sparsity[k] for k in rest}
        masks.update(allocate_per_layer(rest, rest_sparsity, prior=prior))
    masks = {k: masks[k] for k in metrics}
    return _finish(masks, prior) if prior else masks



def _range_masks(metrics: Metrics, scores: Mapping[str, Tensor], sparsity: Sparsity,
                 sets: Sequence[Sequence[ChannelRange]], groups: Mapping[str, int]) -> Masks:
    """:func:`allocate_dependency_aware` for sets of channel ranges."""
    keeps: dict[str, Tensor] = {}
    covered: dict[str, Tensor] = {}
    for members in sets:
        keyed = [(r, k) for r in members if (k := _key(metrics, r.name)) is not None]
        if not keyed:
            continue
        lengths = {len(r) for r, _ in keyed}
        if len(lengths) != 1:
            raise ValueError(f"the channel ranges of one dependency set differ in length: {[r for r, _ in keyed]}")
        whole = True
        for r, k in keyed:
            grid = tuple(metrics[k].score.shape)
            if any(g != 1 for g in grid[1:]):
                raise ValueError(f"dependency-aware allocation needs channel metrics; {k!r} has grid {grid}")
            if r.step < 1 or r.start < 0 or (len(r) and r.indices()[-1] >= grid[0]):
                raise ValueError(f"{r} is not a range of the {grid[0]} output channels of {r.name!r}")
            whole = whole and (r.start, r.stop, r.step) == (0, grid[0], 1)
        device = scores[keyed[0][1]].device
        index = [torch.tensor(r.indices(), dtype=torch.long, device=device) for r, _ in keyed]
        fused = torch.stack([scores[k].reshape(-1)[i] for (_, k), i in zip(keyed, index)]).sum(0)
        s = functools.reduce(_smaller, (_sparsity_for(sparsity, k) for _, k in keyed))
        lcm = math.lcm(*(int(groups.get(r.name, groups.get(k, 1))) for r, k in keyed)) if whole else 1
        keep = group_keep(fused, s, lcm)
        if any(r.blocked is not None for r, _ in keyed):  # shrinking keeps them: so do the masks
            keep = torch.ones_like(keep)
        for (_, k), i in zip(keyed, index):
            n = metrics[k].score.shape[0]
            keeps.setdefault(k, torch.ones(n, dtype=torch.bool, device=device))[i] = keep
            covered.setdefault(k, torch.zeros(n, dtype=torch.long, device=device))[i] += 1
    for k, count in covered.items():
        if not bool((count == 1).all()):
            bad = (count != 1).nonzero().flatten().tolist()
            raise ValueError(f"the channel ranges of {k!r} must cover each of its {count.numel()} channels once; "
                             f"channels {bad[:8]}{' ...' if len(bad) > 8 else ''} are covered "
                             f"{sorted(set(count[bad].tolist()))} times")
    return {k: Mask(keep.reshape(metrics[k].score.shape), metrics[k].shape) for k, keep in keeps.items()}


def _smaller(a: float | Tensor, b: float | Tensor) -> float | Tensor:
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        return torch.minimum(torch.as_tensor(a), torch.as_tensor(b))
    return min(a, b)


def dependency_kept_count(channels: int, sparsity: float, groups: int = 1) -> int:
    """Channels a set keeps: ``groups * kept_count(C // groups, s)`` (plus an unsplit tail)."""
    step = channels // groups
    if step == 0:
        return channels
    return groups * int(kept_count(step, sparsity)) + channels - step * groups

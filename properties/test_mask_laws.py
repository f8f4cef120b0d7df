"""Laws of masks: applying them, combining them, counting them, and ``keep_top``."""

from __future__ import annotations

import math

import torch
from hypothesis import example, given
from hypothesis import strategies as st

import purecompress as pc
from properties.strategies import blocks_for, int_tensors, masks_for, metric_sets, params_and_masks, shapes, sparsities
from purecompress.pruning._records import blocks_of, unblock


def _dense(mask: pc.Mask) -> torch.Tensor:
    return mask.to_dense(torch.bool)


@given(params_and_masks())
def test_apply_masks_is_idempotent(pm: tuple[pc.Params, pc.Masks]) -> None:
    params, masks = pm
    once = pc.apply_masks(params, masks)
    assert pc.trees_equal(pc.apply_masks(once, masks), once)


@given(params_and_masks())
def test_apply_masks_without_masks_is_identity(pm: tuple[pc.Params, pc.Masks]) -> None:
    params, _ = pm
    assert pc.trees_equal(pc.apply_masks(params, {}), params)


@given(params_and_masks())
def test_apply_masks_zeroes_exactly_the_pruned_entries(pm: tuple[pc.Params, pc.Masks]) -> None:
    # Finite params only: apply is t * keep (3x faster than torch.where for element masks in
    # forward+backward), so a pruned NaN/inf entry stays NaN.
    params, masks = pm
    out = pc.apply_masks(params, masks)
    for name, mask in masks.items():
        keep = _dense(mask)
        torch.testing.assert_close(out[name][keep], params[name][keep], rtol=0, atol=0, equal_nan=True)
        assert not out[name][~keep].any()


@given(st.data(), shapes())
@example(data=None, shape=(6,))  # grids (2,) and (3,) do not nest: used to raise, now lcm grid (6,)
def test_mask_and_is_elementwise_intersection(data: st.DataObject | None, shape: tuple[int, ...]) -> None:
    if data is None:
        a = pc.Mask(torch.tensor([True, False]), shape)
        b = pc.Mask(torch.tensor([True, False, True]), shape)
    else:
        a, b = data.draw(masks_for(shape)), data.draw(masks_for(shape))
    assert torch.equal(_dense(a & b), _dense(a) & _dense(b))


@given(st.data(), shapes())
def test_mask_dense_round_trip(data: st.DataObject, shape: tuple[int, ...]) -> None:
    mask = data.draw(masks_for(shape))
    again = pc.Mask.from_dense(mask.to_dense())
    assert torch.equal(_dense(again), _dense(mask))
    assert int(again.kept()) == int(mask.kept())


@given(metric_sets(), sparsities())
def test_per_layer_prunes_exactly_int_s_n_blocks(metrics: pc.Metrics, s: float) -> None:
    masks = pc.allocate_per_layer(metrics, s)
    for name, metric in metrics.items():
        blocks = metric.score.numel()
        pruned_blocks = blocks - int(masks[name].keep.sum())
        assert pruned_blocks == int(s * blocks)
        assert int(masks[name].kept()) == (blocks - int(s * blocks)) * metric.block_numel


@given(st.data(), metric_sets(), sparsities(), sparsities())
def test_masks_are_monotone_under_continuous_masking(data: st.DataObject, metrics: pc.Metrics,
                                                     s1: float, s2: float) -> None:
    # The prior may be at any granularity, not the metric's.
    prior = {name: data.draw(masks_for(m.shape)) for name, m in metrics.items()}
    for allocate in (pc.allocate_per_layer, pc.allocate_global):
        new = allocate(metrics, s2, prior=prior)
        for name in metrics:
            assert not (_dense(new[name]) & ~_dense(prior[name])).any()
        # and re-pruning a result of continuous masking keeps it monotone
        again = allocate(metrics, s1, prior=new)
        for name in metrics:
            assert not (_dense(again[name]) & ~_dense(new[name])).any()


@given(st.integers(1, 30).flatmap(lambda n: st.tuples(int_tensors((n,)), st.integers(-1, n + 1))))
def test_keep_top_keeps_exactly_k(case: tuple[torch.Tensor, int]) -> None:
    score, k = case
    assert int(pc.keep_top(score, k).sum()) == min(max(k, 0), score.numel())


@given(st.integers(1, 30).flatmap(lambda n: st.tuples(int_tensors((n,)), st.integers(0, n))))
def test_keep_top_keeps_only_top_entries(case: tuple[torch.Tensor, int]) -> None:
    score, k = case
    keep = pc.keep_top(score, k)
    if keep.all() or not keep.any():
        return
    assert score[keep].min() >= score[~keep].max()
    # ties at the threshold keep the lower indices
    t = score[keep].min()
    tied = (score == t).nonzero().flatten()
    kept_tied = keep[tied]
    assert torch.equal(kept_tied, kept_tied.sort(descending=True, stable=True).values)


@given(st.integers(1, 30).flatmap(lambda n: st.tuples(int_tensors((n,)), st.integers(0, n),
                                                      st.lists(st.integers(0, n - 1), max_size=3))))
def test_keep_top_ranks_nan_lowest(case: tuple[torch.Tensor, int, list[int]]) -> None:
    score, k, nans = case
    score = score.clone()
    score[nans] = float("nan")
    keep = pc.keep_top(score, k)
    assert int(keep.sum()) == k
    finite = ~score.isnan()
    assert int((keep & finite).sum()) == min(k, int(finite.sum()))


@given(st.data(), shapes())
def test_blocks_of_then_unblock_is_identity(data: st.DataObject, shape: tuple[int, ...]) -> None:
    t = data.draw(int_tensors(shape))
    grid = data.draw(blocks_for(shape)).grid(shape)
    blocks = blocks_of(t, grid)
    assert tuple(blocks.shape) == (*grid, t.numel() // max(1, math.prod(grid)))
    assert torch.equal(unblock(blocks, shape), t)


@given(st.data(), shapes())
def test_a_block_mask_equals_its_dense_expansion(data: st.DataObject, shape: tuple[int, ...]) -> None:
    mask = data.draw(masks_for(shape))
    t = data.draw(int_tensors(shape)) + 1
    assert torch.equal(mask.apply(t), t * mask.to_dense())
    assert int(mask.kept()) == int(mask.to_dense().sum())


def _rows(kind: str, rows: int, n: int, seed: int) -> torch.Tensor:
    """Rows long enough for keep_top's bracketed row path, of one kind (ties, NaN, adversarial)."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(rows, n, generator=gen)
    if kind == "ties":  # few distinct values: the threshold is tied almost always
        return torch.randint(0, 5, (rows, n), generator=gen).float()
    if kind == "nan":
        return base.masked_fill(torch.rand(rows, n, generator=gen) < 0.3, math.nan)
    if kind == "mostly_nan":  # fewer finite entries than k: NaN entries are kept, lower index first
        return base.masked_fill(torch.rand(rows, n, generator=gen) < 0.9, math.nan)
    if kind == "tie_at_median":  # a few entries equal to the value the 50% selection stops at
        row = base.clone()
        cols = torch.randint(0, n, (rows, 6), generator=gen)
        return row.scatter(1, cols, row.kthvalue(n // 2, -1, keepdim=True).values.expand(rows, 6))
    if kind == "all_equal":
        return torch.full((rows, n), 1.5)
    if kind == "infinite":
        return base.masked_fill(torch.rand(rows, n, generator=gen) < 0.2, math.inf).masked_fill(
            torch.rand(rows, n, generator=gen) < 0.2, -math.inf)
    if kind == "adversarial":  # sorted rows with a block of one value right at the median, and a
        # strided sample that sees only the large entries
        row = base.sort(-1).values
        row[:, n // 2 - 40: n // 2 + 40] = row[:, n // 2: n // 2 + 1]
        row[:, :: n // 128] = 1e6
        return row
    return base * torch.rand(rows, 1, generator=gen) * 10  # random, with a scale per row


_KINDS = ["random", "ties", "tie_at_median", "nan", "mostly_nan", "all_equal", "infinite", "adversarial"]


@given(st.sampled_from(_KINDS),
       st.integers(1, 5), st.sampled_from([1024, 2048]), st.integers(0, 2**16),
       st.lists(st.floats(0.0, 1.0), min_size=1, max_size=3), st.sampled_from([torch.float32, torch.float64]))
@example("random", 3, 1024, 0, [0.5], torch.float32)
@example("adversarial", 2, 1024, 1, [0.5, 0.49], torch.float32)
@example("tie_at_median", 4, 1024, 2, [0.5], torch.float32)
def test_keep_top_on_long_rows_equals_the_kthvalue_selection(kind: str, rows: int, n: int, seed: int,
                                                             sparsities: list[float], dtype: torch.dtype) -> None:
    from purecompress.pruning._allocators import _keep_top_kth, _rows_fast

    score = _rows(kind, rows, n, seed).to(dtype)
    for s in sparsities:
        k = int(pc.kept_count(n, s))
        if not 0 < k < n:  # all or nothing: no selection at all
            continue
        assert _rows_fast(score, k, -1)
        assert torch.equal(pc.keep_top(score, k), _keep_top_kth(torch.nan_to_num(score, nan=-math.inf), k, -1))

"""Laws of the N:M allocator: exactly N kept per group, idempotent, invariant to positive scaling,
inputs untouched, continuous masking never un-prunes.

The strategy lives here rather than in ``strategies.py`` while ``purecompress.pruning`` is being
assembled (it is the N:M case of ``metric_sets``: element metrics whose input dim is a multiple of M).
"""

from __future__ import annotations

import torch
from hypothesis import example, given
from hypothesis import strategies as st

import purecompress as pc
from properties.strategies import int_tensors
from purecompress.llm import allocate_n_m

N_M = [(1, 2), (2, 4), (1, 4), (3, 4), (4, 8), (2, 8), (5, 8)]


@st.composite
def n_m_metrics(draw: st.DrawFn) -> tuple[pc.Metrics, int, int]:
    """``({'l<i>.weight': element Metric}, n, m)``: Linear (or conv) shapes grouped along the input dim."""
    n, m = draw(st.sampled_from(N_M))
    metrics = {}
    for i in range(draw(st.integers(1, 3))):
        out, groups = draw(st.integers(1, 5)), draw(st.integers(1, 3))
        shape = draw(st.sampled_from([(out, groups * m), (out, groups * m, 1), (out, groups, m // 2, 2)]))
        metrics[f"l{i}.weight"] = pc.Metric(draw(int_tensors(shape)), shape)
    return metrics, n, m


def _groups(mask: pc.Mask, m: int) -> torch.Tensor:
    return mask.broadcastable().expand(mask.shape).reshape(mask.shape[0], -1, m)


@given(n_m_metrics())
@example(({"w": pc.Metric(torch.zeros(2, 8), (2, 8))}, 2, 4))  # all tied: lower indices kept
def test_exactly_n_kept_per_group(case: tuple[pc.Metrics, int, int]) -> None:
    metrics, n, m = case
    for mask in allocate_n_m(metrics, n, m).values():
        assert bool((_groups(mask, m).sum(-1) == n).all())


@given(n_m_metrics())
def test_kept_entries_outscore_pruned_entries_of_their_group(case: tuple[pc.Metrics, int, int]) -> None:
    metrics, n, m = case
    for name, mask in allocate_n_m(metrics, n, m).items():
        keep = _groups(mask, m)
        score = metrics[name].score.reshape(keep.shape)
        lowest_kept = score.masked_fill(~keep, float("inf")).amin(-1)
        highest_pruned = score.masked_fill(keep, -float("inf")).amax(-1)
        assert bool((lowest_kept >= highest_pruned).all())


@given(n_m_metrics())
def test_idempotent_on_the_masked_weights(case: tuple[pc.Metrics, int, int]) -> None:
    metrics, n, m = case
    params = {name: metric.score for name, metric in metrics.items()}
    masks = allocate_n_m(pc.level(params, list(params)), n, m)
    again = allocate_n_m(pc.level(pc.apply_masks(params, masks), list(params)), n, m)
    assert pc.trees_equal(masks, again)


@given(n_m_metrics())
def test_idempotent_with_itself_as_prior(case: tuple[pc.Metrics, int, int]) -> None:
    metrics, n, m = case
    masks = allocate_n_m(metrics, n, m)
    assert pc.trees_equal(allocate_n_m(metrics, n, m, prior=masks), masks)


@given(n_m_metrics(), st.sampled_from([0.25, 1.0, 2.0, 1024.0]))
def test_invariant_to_positive_scaling(case: tuple[pc.Metrics, int, int], scale: float) -> None:
    metrics, n, m = case
    scaled = {name: pc.Metric(metric.score * scale, metric.shape) for name, metric in metrics.items()}
    assert pc.trees_equal(allocate_n_m(scaled, n, m), allocate_n_m(metrics, n, m))


@given(n_m_metrics())
def test_inputs_are_not_modified(case: tuple[pc.Metrics, int, int]) -> None:
    metrics, n, m = case
    before = {name: metric.score.clone() for name, metric in metrics.items()}
    prior = allocate_n_m(metrics, n, m)
    prior_keep = {name: mask.keep.clone() for name, mask in prior.items()}
    allocate_n_m(metrics, n, m, prior=prior)
    assert all(torch.equal(metrics[name].score, before[name]) for name in metrics)
    assert all(torch.equal(prior[name].keep, prior_keep[name]) for name in prior)


@given(n_m_metrics(), st.data())
def test_a_prior_is_never_unpruned(case: tuple[pc.Metrics, int, int], data: st.DataObject) -> None:
    metrics, n, m = case
    prior = {name: pc.Mask(data.draw(int_tensors(metric.shape, levels=2)).bool(), metric.shape)
             for name, metric in metrics.items()}
    masks = allocate_n_m(metrics, n, m, prior=prior)
    for name, mask in masks.items():
        assert not bool((mask.keep & ~prior[name].keep).any())
        assert bool((_groups(mask, m).sum(-1) <= n).all())

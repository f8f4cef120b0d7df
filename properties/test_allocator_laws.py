"""Laws of the allocators: exact counts, caps, balance, invariance to the metric's scale."""

from __future__ import annotations

import torch
from hypothesis import example, given
from hypothesis import strategies as st

import purecompress as pc
from properties.strategies import int_tensors, metric_sets, shapes, sparsities
from purecompress.pruning._records import blocks_of


def _pruned_elements(masks: pc.Masks, metrics: pc.Metrics) -> int:
    return sum(m.block_numel * m.score.numel() - int(masks[n].kept()) for n, m in metrics.items())


def _unprotected(metrics: pc.Metrics, cap: float) -> int:
    """Elements that the per-layer cap lets global allocation prune."""
    return sum(int(cap * m.score.numel()) * m.block_numel for m in metrics.values())


@given(metric_sets(element=True), sparsities(), st.sampled_from([0.99, 0.5, 0.8, 1.0]))
def test_global_hits_the_total_exactly_at_element_granularity(metrics: pc.Metrics, s: float, cap: float) -> None:
    n = sum(m.score.numel() for m in metrics.values())
    masks = pc.allocate_global(metrics, s, max_sparsity=cap)
    assert _pruned_elements(masks, metrics) == min(int(s * n), _unprotected(metrics, cap))


@given(metric_sets(), sparsities(), st.sampled_from([0.99, 0.5, 1.0]))
def test_global_hits_the_total_within_one_block(metrics: pc.Metrics, s: float, cap: float) -> None:
    n = sum(m.block_numel * m.score.numel() for m in metrics.values())
    target = min(int(s * n), _unprotected(metrics, cap))
    pruned = _pruned_elements(pc.allocate_global(metrics, s, max_sparsity=cap), metrics)
    assert target <= pruned < target + max(m.block_numel for m in metrics.values())


@given(st.data(), metric_sets(max_layers=4), sparsities(max_value=0.999))
def test_global_respects_per_layer_caps(data: st.DataObject, metrics: pc.Metrics, s: float) -> None:
    caps = {name: data.draw(st.sampled_from([0.0, 0.3, 0.5, 0.99, 1.0])) for name in metrics}
    masks = pc.allocate_global(metrics, s, max_sparsity=caps)
    for name, metric in metrics.items():
        blocks = metric.score.numel()
        assert blocks - int(masks[name].keep.sum()) <= int(caps[name] * blocks)


def _scaled(metrics: pc.Metrics, scale: float, shift: float) -> pc.Metrics:
    return {n: pc.Metric(m.score * scale + shift, m.shape) for n, m in metrics.items()}


def _allocations(metrics: pc.Metrics, s: float) -> list[pc.Masks]:
    return [
        pc.allocate_per_layer(metrics, s),
        pc.allocate_global(metrics, s),
        pc.allocate_balanced(metrics, s, gran=[1]),
    ]


# Scores are small integers and scales powers of two, so scaled scores are exact (the law is about
# the allocators, not float rounding).
@given(metric_sets(), sparsities(), st.integers(-6, 6).map(lambda e: 2.0**e))
def test_allocation_is_invariant_to_positive_scaling(metrics: pc.Metrics, s: float, scale: float) -> None:
    for a, b in zip(_allocations(metrics, s), _allocations(_scaled(metrics, scale, 0.0), s)):
        assert pc.trees_equal(a, b)


@given(metric_sets(), sparsities(), st.integers(-1000, 1000).map(float))
def test_allocation_is_invariant_to_adding_a_constant(metrics: pc.Metrics, s: float, shift: float) -> None:
    for a, b in zip(_allocations(metrics, s), _allocations(_scaled(metrics, 1.0, shift), s)):
        assert pc.trees_equal(a, b)


@given(metric_sets(), sparsities())
@example(  # float64 scores 1 and 1+1e-12 used to tie after a cast to float32 (kept the wrong one)
    metrics={"l0.weight": pc.Metric(torch.tensor([1.0, 1.0 + 1e-12], dtype=torch.float64), (2,))},
    s=0.5,
)
def test_allocation_respects_the_order_of_scores(metrics: pc.Metrics, s: float) -> None:
    masks = pc.allocate_per_layer(metrics, s)
    for name, metric in metrics.items():
        keep, score = masks[name].keep, metric.score
        if keep.all() or not keep.any():
            continue
        assert score[keep].min() >= score[~keep].max()


@st.composite
def _banked(draw: st.DrawFn) -> tuple[pc.Metrics, list[int]]:
    """Element metrics with a bank shape that tiles each of them."""
    shape = draw(shapes(min_rank=1, max_rank=3))
    gran = [draw(st.sampled_from([d for d in range(1, n + 1) if n % d == 0])) for n in shape]
    gran = gran[draw(st.integers(0, len(gran) - 1)):]  # front-padded with 1 by the allocator
    metrics = {f"l{i}.weight": pc.Metric(draw(int_tensors(shape)), shape) for i in range(draw(st.integers(1, 2)))}
    return metrics, gran


@given(_banked(), sparsities())
def test_balanced_prunes_exactly_int_s_bank_per_bank(case: tuple[pc.Metrics, list[int]], s: float) -> None:
    metrics, gran = case
    masks = pc.allocate_balanced(metrics, s, gran=gran)
    for name, metric in metrics.items():
        banks = blocks_of(masks[name].keep, pc.Block(tuple(gran)).grid(metric.shape))
        bank_numel = banks.shape[-1]
        assert torch.all(banks.sum(-1) == bank_numel - int(s * bank_numel))


@given(metric_sets(), st.integers(-1, 50).map(float))
def test_threshold_keeps_exactly_the_scores_above_it(metrics: pc.Metrics, threshold: float) -> None:
    masks = pc.allocate_threshold(metrics, threshold)
    for name, metric in metrics.items():
        assert torch.equal(masks[name].keep, metric.score > threshold)

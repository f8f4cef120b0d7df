"""Law: every allocator run under ``torch.func.vmap`` over a tensor of sparsities (or over stacked
metrics) equals the loop of plain calls, exactly (issue 15, sparsity as a tensor)."""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.func import vmap

import purecompress as pc
from properties.strategies import metric_sets, shapes

SPARSITIES = st.lists(st.sampled_from([0.0, 0.1, 0.25, 1 / 3, 0.5, 0.7, 0.9, 0.99]), min_size=1, max_size=5)


def _loop_equals_vmap(allocate, metrics: pc.Metrics, values: list[float]) -> None:  # noqa: ANN001
    s = torch.tensor(values, dtype=torch.float64)
    batched = vmap(allocate)(s)
    for i, value in enumerate(values):
        expected = allocate(value)
        assert set(batched) == set(expected)
        for name, mask in expected.items():
            assert torch.equal(batched[name].keep[i], mask.keep.expand_as(batched[name].keep[i])), (name, value)


@given(metric_sets(), SPARSITIES)
def test_per_layer_under_vmap_equals_the_loop(metrics: pc.Metrics, values: list[float]) -> None:
    _loop_equals_vmap(lambda s: pc.allocate_per_layer(metrics, s), metrics, values)


@given(metric_sets(max_layers=3), SPARSITIES, st.sampled_from([0.99, 0.5, 1.0]))
def test_global_with_caps_under_vmap_equals_the_loop(metrics: pc.Metrics, values: list[float], cap: float) -> None:
    _loop_equals_vmap(lambda s: pc.allocate_global(metrics, s, max_sparsity=cap), metrics, values)


@given(st.integers(1, 4), st.integers(0, 2**16), SPARSITIES)
def test_balanced_under_vmap_equals_the_loop(rows: int, seed: int, values: list[float]) -> None:
    gen = torch.Generator().manual_seed(seed)
    metrics = {"w": pc.Metric(torch.randint(0, 5, (rows, 10), generator=gen).float(), (rows, 10))}
    _loop_equals_vmap(lambda s: pc.allocate_balanced(metrics, s, gran=[1, 5]), metrics, values)


@given(metric_sets(), st.lists(st.sampled_from([-1.0, 0.0, 2.0, 10.0, 49.0]), min_size=1, max_size=4))
def test_threshold_under_vmap_equals_the_loop(metrics: pc.Metrics, values: list[float]) -> None:
    _loop_equals_vmap(lambda t: pc.allocate_threshold(metrics, t), metrics, values)


@given(st.integers(2, 12), st.integers(0, 2**16), SPARSITIES, st.sampled_from([1, 2, 4]))
def test_dependency_aware_under_vmap_equals_the_loop(channels: int, seed: int, values: list[float],
                                                      groups: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    metrics = {f"{n}.weight": pc.Metric(torch.randint(0, 4, (channels, 1), generator=gen).float(), (channels, 3))
               for n in "abc"}
    _loop_equals_vmap(lambda s: pc.allocate_dependency_aware(
        metrics, s, channel_sets=[("a", "b")], groups={"a": groups}), metrics, values)


@given(shapes(min_rank=1, max_rank=2), st.integers(1, 4), st.integers(0, 2**16), st.sampled_from([0.25, 0.5, 0.9]))
def test_per_layer_under_vmap_over_stacked_metrics_equals_the_loop(shape: tuple[int, ...], k: int, seed: int,
                                                                   s: float) -> None:
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 5, (k, *shape), generator=gen).float()
    batched = vmap(lambda score: pc.allocate_per_layer({"w": pc.Metric(score, shape)}, s))(scores)
    for i in range(k):
        expected = pc.allocate_per_layer({"w": pc.Metric(scores[i], shape)}, s)["w"].keep
        assert torch.equal(batched["w"].keep[i], expected)

"""Laws of dependency-aware allocation (``allocate_dependency_aware``)."""

from __future__ import annotations

import math

import torch
from hypothesis import given
from hypothesis import strategies as st

from purecompress.pruning import Mask, Metric, allocate_dependency_aware, dependency_kept_count


@st.composite
def dependency_problems(draw: st.DrawFn) -> tuple[dict[str, Metric], list[tuple[str, ...]], dict[str, int], dict]:
    """Layers with one channel count, random integer metrics (ties common), sets and groups."""
    groups_lcm = draw(st.sampled_from([1, 2, 3, 4, 6]))
    channels = groups_lcm * draw(st.integers(1, 4))
    n = draw(st.integers(1, 5))
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    names = [f"l{i}" for i in range(n)]
    metrics = {f"{m}.weight": Metric(torch.randint(0, 4, (channels, 1, 1), generator=g).float(), (channels, 2, 3))
               for m in names}
    order = draw(st.permutations(names))
    cuts = sorted(draw(st.sets(st.integers(1, max(n - 1, 1)), max_size=n - 1))) if n > 1 else []
    sets = [tuple(order[a:b]) for a, b in zip([0, *cuts], [*cuts, n])]
    groups = {m: draw(st.sampled_from([d for d in (1, 2, 3, 4, 6) if groups_lcm % d == 0])) for m in names}
    sparsity = {f"{m}.weight": draw(st.sampled_from([0.0, 0.25, 0.5, 0.7, 0.99])) for m in names}
    return metrics, sets, groups, sparsity


@given(dependency_problems())
def test_members_of_a_set_get_identical_masks(problem: tuple) -> None:
    metrics, sets, groups, sparsity = problem
    masks = allocate_dependency_aware(metrics, sparsity, channel_sets=sets, groups=groups)
    for members in sets:
        first = masks[f"{members[0]}.weight"]
        assert all(torch.equal(masks[f"{m}.weight"].keep, first.keep) for m in members)


@given(dependency_problems())
def test_each_group_keeps_the_same_count(problem: tuple) -> None:
    metrics, sets, groups, sparsity = problem
    masks = allocate_dependency_aware(metrics, sparsity, channel_sets=sets, groups=groups)
    for members in sets:
        lcm = math.lcm(*(groups[m] for m in members))
        s = min(sparsity[f"{m}.weight"] for m in members)
        keep = masks[f"{members[0]}.weight"].keep.flatten()
        per_group = keep.reshape(lcm, -1).sum(1)
        assert per_group.unique().numel() == 1
        assert int(keep.sum()) == dependency_kept_count(keep.numel(), s, lcm)


@given(dependency_problems())
def test_singleton_sets_without_groups_equal_per_layer_counts(problem: tuple) -> None:
    metrics, sets, _, sparsity = problem
    singletons = [(name[: -len(".weight")],) for name in metrics]
    masks = allocate_dependency_aware(metrics, sparsity, channel_sets=singletons)
    loose = allocate_dependency_aware(metrics, sparsity, channel_sets=[])
    for name in metrics:
        assert torch.equal(masks[name].keep, loose[name].keep)


@given(dependency_problems(), st.integers(0, 2**16))
def test_prior_masks_are_never_unpruned(problem: tuple, seed: int) -> None:
    metrics, sets, groups, sparsity = problem
    g = torch.Generator().manual_seed(seed)
    prior = {n: Mask(torch.rand(m.score.shape, generator=g) > 0.3, m.shape) for n, m in metrics.items()}
    masks = allocate_dependency_aware(metrics, sparsity, channel_sets=sets, groups=groups, prior=prior)
    for name, mask in masks.items():
        assert not (mask.keep & ~prior[name].keep).any()


@given(dependency_problems(), st.sampled_from([0.5, 2.0, 8.0]))
def test_invariant_to_positive_scaling_of_all_metrics(problem: tuple, factor: float) -> None:
    metrics, sets, groups, sparsity = problem
    scaled = {n: Metric(m.score * factor, m.shape) for n, m in metrics.items()}
    a = allocate_dependency_aware(metrics, sparsity, channel_sets=sets, groups=groups)
    b = allocate_dependency_aware(scaled, sparsity, channel_sets=sets, groups=groups)
    assert all(torch.equal(a[n].keep, b[n].keep) for n in metrics)

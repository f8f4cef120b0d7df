"""Example tests of the allocators, bias masks, the pipeline, params_of and apply_masks."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import purecompress as pc


def _metric(values: list[float], shape: tuple[int, ...] | None = None) -> pc.Metric:
    score = torch.tensor(values)
    return pc.Metric(score, shape or tuple(score.shape))


# ----- kept_count and keep_top -----------------------------------------------------------------


@pytest.mark.parametrize(("numel", "s", "kept"), [(10, 0.33, 7), (10, 0.0, 10), (10, 0.99, 1), (1, 0.99, 1),
                                                  (1, 1.0, 0), (5, 0.7, 2), (100, 0.999, 1)])
def test_kept_count_is_nnis_rule(numel: int, s: float, kept: int) -> None:
    assert pc.kept_count(numel, s) == kept


@pytest.mark.parametrize("s", [-0.1, 1.01, float("nan")])
def test_kept_count_rejects_out_of_range(s: float) -> None:
    with pytest.raises(ValueError, match=r"sparsity must be in \[0, 1\]"):
        pc.kept_count(4, s)


def test_keep_top_breaks_ties_by_index() -> None:
    assert pc.keep_top(torch.tensor([2.0, 2.0, 2.0, 2.0]), 2).tolist() == [True, True, False, False]
    assert pc.keep_top(torch.tensor([1.0, 3.0, 1.0, 1.0]), 2).tolist() == [True, True, False, False]


def test_keep_top_nan_is_least_important() -> None:
    nan = float("nan")
    assert pc.keep_top(torch.tensor([nan, 0.0, nan, -5.0]), 2).tolist() == [False, True, False, True]
    assert pc.keep_top(torch.tensor([nan, nan]), 1).tolist() == [True, False]


def test_keep_top_k_edges_and_dim() -> None:
    score = torch.tensor([[1.0, 3.0], [4.0, 2.0]])
    assert pc.keep_top(score, 0).sum() == 0 and pc.keep_top(score, 5).all()
    assert pc.keep_top(score, 1, dim=0).tolist() == [[False, True], [True, False]]
    assert pc.keep_top(score, 1).tolist() == [[False, True], [True, False]]


def test_keep_top_keeps_float64_precision() -> None:
    # A float32 cast made these tie and kept the lower (smaller) one.
    assert pc.keep_top(torch.tensor([1.0, 1.0 + 1e-12], dtype=torch.float64), 1).tolist() == [False, True]


def test_keep_top_accepts_integer_scores() -> None:
    assert pc.keep_top(torch.tensor([3, 1, 2]), 2).tolist() == [True, False, True]


# ----- per layer -------------------------------------------------------------------------------


def test_per_layer_sparsity_zero_keeps_all_and_close_to_one_keeps_one() -> None:
    metrics = {"w": _metric([3.0, 1.0, 2.0, 0.0, 5.0])}
    assert pc.allocate_per_layer(metrics, 0.0)["w"].keep.all()
    assert pc.allocate_per_layer(metrics, 0.999)["w"].keep.tolist() == [False, False, False, False, True]


def test_per_layer_one_element_layer_is_never_emptied_below_one() -> None:
    masks = pc.allocate_per_layer({"b": _metric([0.5])}, 0.9)
    assert masks["b"].keep.tolist() == [True]


def test_per_layer_channel_metric_prunes_whole_channels() -> None:
    metrics = pc.l1_norm({"w": torch.arange(8.0).view(4, 2)}, ["w"])
    mask = pc.allocate_per_layer(metrics, 0.5)["w"]
    assert mask.keep.shape == (4, 1) and mask.to_dense().tolist() == [[0, 0], [0, 0], [1, 1], [1, 1]]


def test_per_layer_sparsity_per_name_and_missing_name() -> None:
    metrics = {"a": _metric([1.0, 2.0]), "b": _metric([1.0, 2.0])}
    masks = pc.allocate_per_layer(metrics, {"a": 0.5, "b": 0.0})
    assert masks["a"].keep.tolist() == [False, True] and masks["b"].keep.all()
    with pytest.raises(KeyError, match="no sparsity given for 'b'"):
        pc.allocate_per_layer(metrics, {"a": 0.5})


def test_per_layer_nan_scores_are_pruned_first() -> None:
    masks = pc.allocate_per_layer({"w": _metric([float("nan"), 0.0, 1.0])}, 0.34)
    assert masks["w"].keep.tolist() == [False, True, True]


def test_prior_at_a_finer_granularity_than_the_metric() -> None:
    # element prior, channel metric: a partly pruned channel counts as kept, and stays partly pruned
    prior = {"w": pc.Mask.from_dense(torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]]))}
    metrics = {"w": pc.Metric(torch.tensor([[5.0], [1.0], [9.0]]), (3, 2))}
    mask = pc.allocate_per_layer(metrics, 0.34, prior=prior)["w"]
    assert mask.to_dense().tolist() == [[1, 0], [1, 1], [0, 0]]  # channel 2 was pruned: never un-pruned
    mask = pc.allocate_per_layer(metrics, 0.67, prior=prior)["w"]
    assert mask.to_dense().tolist() == [[1, 0], [0, 0], [0, 0]]


def test_prior_at_a_coarser_granularity_than_the_metric() -> None:
    prior = {"w": pc.Mask(torch.tensor([[True], [False]]), (2, 2))}
    metrics = pc.level({"w": torch.tensor([[1.0, 2.0], [9.0, 9.0]])}, ["w"])
    mask = pc.allocate_per_layer(metrics, 0.5, prior=prior)["w"]
    assert mask.to_dense().tolist() == [[1, 1], [0, 0]]
    mask = pc.allocate_per_layer(metrics, 0.75, prior=prior)["w"]
    assert mask.to_dense().tolist() == [[0, 1], [0, 0]]


def test_prior_whose_grid_does_not_nest_with_the_metrics() -> None:
    prior = {"w": pc.Mask(torch.tensor([True, False]), (6,))}  # blocks of 3
    metrics = {"w": pc.Metric(torch.tensor([1.0, 2.0, 3.0]), (6,))}  # blocks of 2
    mask = pc.allocate_per_layer(metrics, 0.0, prior=prior)["w"]
    assert mask.to_dense().tolist() == [1, 1, 1, 0, 0, 0]


def test_prior_of_another_shape_is_an_error() -> None:
    with pytest.raises(ValueError, match="prior mask of 'w' has shape"):
        pc.allocate_per_layer({"w": _metric([1.0, 2.0])}, 0.5, prior={"w": pc.Mask.dense((3,))})


# ----- global ----------------------------------------------------------------------------------


def test_global_pools_layers() -> None:
    metrics = {"a": _metric([1.0, 2.0, 3.0, 4.0]), "b": _metric([10.0, 20.0, 30.0, 40.0])}
    masks = pc.allocate_global(metrics, 0.5)
    assert masks["a"].keep.tolist() == [False, False, False, True]  # the 0.99 cap keeps one
    assert masks["b"].keep.tolist() == [False, True, True, True]


def test_global_max_sparsity_per_name() -> None:
    metrics = {"a": _metric([1.0, 2.0, 3.0, 4.0]), "b": _metric([10.0, 20.0, 30.0, 40.0])}
    masks = pc.allocate_global(metrics, 0.5, max_sparsity={"a": 0.25})
    assert masks["a"].keep.tolist() == [False, True, True, True]
    assert masks["b"].keep.tolist() == [False, False, False, True]  # 4 pruned in all; b is capped at 3


def test_global_mixed_block_sizes_prune_at_most_one_block_more() -> None:
    metrics = {"a": pc.Metric(torch.tensor([[1.0], [5.0]]), (2, 4)), "b": _metric([2.0, 3.0, 6.0, 7.0])}
    masks = pc.allocate_global(metrics, 0.3)  # int(0.3 * 12) = 3 elements
    assert masks["a"].keep.flatten().tolist() == [False, True]  # 4 elements pruned: one block over
    assert masks["b"].keep.all()


def test_global_with_nothing() -> None:
    assert pc.allocate_global({}, 0.5) == {}


# ----- balanced and threshold ------------------------------------------------------------------


def test_balanced_nni_vector_prunes_exactly_60_percent_at_07_with_banks_of_5() -> None:
    metrics = pc.level({"w": torch.arange(1.0, 21.0).view(2, 10)}, ["w"])
    mask = pc.allocate_balanced(metrics, 0.7, gran=[5])["w"]
    assert mask.sparsity() == pytest.approx(0.6)
    assert mask.keep.tolist() == [[False, False, False, True, True] * 2] * 2


def test_balanced_errors() -> None:
    metrics = pc.level({"w": torch.ones(2, 10)}, ["w"])
    with pytest.raises(ValueError, match="not aligned with balance_gran"):
        pc.allocate_balanced(metrics, 0.5, gran=[3])
    with pytest.raises(ValueError, match="more dims"):
        pc.allocate_balanced(metrics, 0.5, gran=[1, 1, 5])
    with pytest.raises(ValueError, match="positive ints"):
        pc.allocate_balanced(metrics, 0.5, gran=[0])


def test_threshold_is_strict_and_nan_is_pruned() -> None:
    masks = pc.allocate_threshold({"w": _metric([0.5, 1.0, 2.0, float("nan")])}, 1.0)
    assert masks["w"].keep.tolist() == [False, False, True, False]
    masks = pc.allocate_threshold({"w": _metric([0.5, 2.0])}, {"w": 0.1})
    assert masks["w"].keep.all()


# ----- bias masks ------------------------------------------------------------------------------


def test_bias_masks_channel_masks_prune_bias() -> None:
    masks = {"fc.weight": pc.Mask(torch.tensor([[True], [False], [True]]), (3, 4))}
    out = pc.bias_masks(masks, {"fc.bias": (3,)})
    assert out["fc.bias"].keep.tolist() == [True, False, True]
    assert "fc.bias" not in masks  # a copy


def test_bias_masks_fine_grained_masks_leave_bias_dense() -> None:
    dense = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    out = pc.bias_masks({"fc.weight": pc.Mask.from_dense(dense)}, {"fc.bias": (3,)})
    assert out["fc.bias"].keep.all()
    row_empty = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]])
    out = pc.bias_masks({"fc.weight": pc.Mask.from_dense(row_empty)}, {"fc.bias": (3,)})
    assert out["fc.bias"].keep.tolist() == [True, False, True]


def test_bias_masks_blocks_over_rows_and_root_level_names() -> None:
    mask = pc.Mask(torch.tensor([[True], [False]]), (4, 3))  # blocks of 2 rows
    out = pc.bias_masks({"weight": mask}, {"bias": (4,)})
    assert out["bias"].keep.tolist() == [True, True, False, False]


@pytest.mark.parametrize("shapes", [{}, {"fc.bias": (4,)}, {"fc.bias": (3, 1)}])
def test_bias_masks_skip_missing_or_mismatched_biases(shapes: dict[str, tuple[int, ...]]) -> None:
    masks = {"fc.weight": pc.Mask(torch.tensor([[True], [False], [True]]), (3, 4))}
    assert list(pc.bias_masks(masks, shapes)) == ["fc.weight"]


def test_bias_masks_only_for_weight_names() -> None:
    mask = pc.Mask(torch.tensor([[True], [False]]), (2, 3))
    # "qweight" is not "<module>.weight": it must not mask "qbias" (used to, by suffix match)
    assert list(pc.bias_masks({"m.qweight": mask}, {"m.qbias": (2,)})) == ["m.qweight"]
    # a 0-d weight has no rows (used to raise IndexError)
    assert list(pc.bias_masks({"m.weight": pc.Mask(torch.tensor(True), ())}, {"m.bias": (3,)})) == ["m.weight"]


# ----- pipeline, params_of, apply_masks ---------------------------------------------------------


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 6), nn.Linear(6, 2))


def _plan(model: nn.Module, config_list: list[dict[str, object]]) -> pc.Plan:
    return pc.select(model, pc.from_config_list(config_list))


def test_allocate_per_layer_uses_each_winning_configs_sparsity_and_masks_biases() -> None:
    model = _model()
    plan = _plan(model, [{"sparsity": 0.5, "op_types": ["Conv2d"]}, {"sparsity": 0.25, "op_types": ["Linear"]}])
    params = pc.params_of(model)
    masks = pc.allocate(pc.l1_norm(params, plan), plan)
    assert sorted(masks) == ["0.bias", "0.weight", "3.bias", "3.weight", "4.bias", "4.weight"]
    assert masks["0.weight"].sparsity() == 0.5 and masks["3.weight"].sparsity() == pytest.approx(1 / 6)
    assert int(masks["0.bias"].kept()) == 2
    no_bias = pc.allocate(pc.l1_norm(params, plan), plan, bias=False)
    assert sorted(no_bias) == ["0.weight", "3.weight", "4.weight"]


def test_allocate_global_per_config_group_with_caps() -> None:
    model = _model()
    plan = _plan(model, [{"total_sparsity": 0.5, "op_types": ["Linear"], "max_sparsity_per_layer": {"4": 0.5}}])
    params = pc.params_of(model)
    masks = pc.allocate(pc.level(params, plan), plan, distribution="global", bias=False)
    pruned = sum(params[n].numel() - int(m.kept()) for n, m in masks.items())
    assert pruned == int(0.5 * (24 + 12))
    assert masks["4.weight"].sparsity() <= 0.5


def test_allocate_balanced_and_errors() -> None:
    model = _model()
    plan = _plan(model, [{"sparsity": 0.5, "op_types": ["Linear"]}])
    params = pc.params_of(model)
    masks = pc.allocate(pc.level(params, plan), plan, distribution="balanced", balance_gran=[2])
    assert all(masks[n].sparsity() == 0.5 for n in ("3.weight", "4.weight"))
    with pytest.raises(ValueError, match="needs balance_gran"):
        pc.allocate(pc.level(params, plan), plan, distribution="balanced")
    with pytest.raises(ValueError, match="unknown distribution"):
        pc.allocate(pc.level(params, plan), plan, distribution="bank")  # type: ignore[arg-type]
    with pytest.raises(KeyError, match="does not select"):
        pc.allocate(pc.level(params, ["0.weight"]), plan)


def test_allocate_requires_a_sparsity_from_the_config() -> None:
    model = _model()
    plan = pc.Plan((pc.PlanEntry("3", "Linear", 0, pc.PruneConfig(pc.Selector(op_names=("3",))),
                                 {"3.weight": (6, 4)}),))
    with pytest.raises(ValueError, match="sets no sparsity"):
        pc.allocate(pc.level(pc.params_of(model), plan), plan)


def test_prune_with_prior_never_unprunes() -> None:
    model = _model()
    plan = _plan(model, [{"sparsity": 0.5, "op_types": ["Linear"]}])
    params = pc.params_of(model)
    first = pc.prune(params, plan, pc.l1_norm)
    changed = {k: -v for k, v in params.items()}  # a different ranking
    second = pc.prune(changed, plan, pc.l1_norm, prior=first)
    for name, mask in second.items():
        assert not (mask.to_dense(torch.bool) & ~first[name].to_dense(torch.bool)).any()


def test_params_of_is_detached_shares_storage_and_has_buffers() -> None:
    model = _model()
    params = pc.params_of(model)
    assert "1.running_mean" in params and "1.num_batches_tracked" in params
    assert "1.running_mean" not in pc.params_of(model, buffers=False)
    assert not params["0.weight"].requires_grad
    assert params["0.weight"].data_ptr() == model[0].weight.data_ptr()


def test_apply_masks_new_dict_dense_when_missing_and_unknown_key_error() -> None:
    params = {"w": torch.ones(2, 2), "b": torch.ones(2)}
    masks = {"w": pc.Mask(torch.tensor([[True], [False]]), (2, 2))}
    out = pc.apply_masks(params, masks)
    assert out is not params and out["b"] is params["b"]
    assert out["w"].tolist() == [[1, 1], [0, 0]] and params["w"].sum() == 4
    with pytest.raises(KeyError, match="not in params"):
        pc.apply_masks(params, {"v": pc.Mask.dense((2,))})
    with pytest.raises(ValueError, match="applied to a tensor of shape"):
        pc.apply_masks(params, {"b": pc.Mask.dense((3,))})


@pytest.mark.parametrize("kind", ["normal", "sorted", "reversed", "constant", "three_values", "periodic"])
def test_sampled_selection_is_exact_on_large_and_adversarial_inputs(kind: str) -> None:
    from purecompress.pruning._allocators import _kth_smallest_sampled

    n = 1 << 17
    x = {
        "normal": torch.randn(n, generator=torch.Generator().manual_seed(0)),
        "sorted": torch.arange(n, dtype=torch.float32),
        "reversed": torch.arange(n, dtype=torch.float32).flip(0),
        "constant": torch.zeros(n),
        "three_values": torch.randint(0, 3, (n,), generator=torch.Generator().manual_seed(1)).float(),
        "periodic": (torch.arange(n) % 8).float(),  # the strided sample sees one residue only
    }[kind]
    for rank in (1, 7, n // 3, n // 2, n - 3, n):
        assert torch.equal(_kth_smallest_sampled(x, rank), torch.kthvalue(x, rank).values)
    assert pc.keep_top(x, n // 2).sum() == n // 2


def test_keep_top_row_path_resolves_most_rows_itself_and_falls_back_exactly() -> None:
    # Rows past the chunk size, with tied, NaN, all-equal rows mixed in at known indices: the
    # bracketed row path must give the kthvalue path's mask, and settle the plain rows by itself.
    from purecompress.pruning._allocators import _ROWS_CHUNK, _keep_top_kth, _keep_top_rows_chunk

    gen = torch.Generator().manual_seed(0)
    score = torch.randn(_ROWS_CHUNK + 37, 1024, generator=gen) * torch.rand(_ROWS_CHUNK + 37, 1, generator=gen)
    score[5] = 2.0
    score[_ROWS_CHUNK + 3] = torch.randint(0, 3, (1024,), generator=gen).float()
    score[_ROWS_CHUNK + 9, ::3] = float("nan")
    for k in (1, 300, 512, 1000):
        expected = _keep_top_kth(torch.nan_to_num(score, nan=-math.inf), k, -1)
        assert torch.equal(pc.keep_top(score, k), expected)
    out = torch.empty(_ROWS_CHUNK, 1024, dtype=torch.bool)
    missed = _keep_top_rows_chunk(score[:_ROWS_CHUNK], 512, torch.empty_like(out), out)
    assert 5 in missed.tolist() and missed.numel() < 20


def test_keep_top_row_path_is_not_used_under_vmap_or_for_short_rows() -> None:
    from purecompress.pruning._allocators import _rows_fast

    assert not _rows_fast(torch.zeros(4, 1000), 10, -1)  # not a multiple of 256
    assert not _rows_fast(torch.zeros(4, 512), 10, -1)  # short
    assert not _rows_fast(torch.zeros(4, 1024), 10, 0)  # not the last dim
    assert not _rows_fast(torch.zeros(4, 1024), torch.tensor(10), -1)  # tensor k: the ranked path
    seen = []
    torch.func.vmap(lambda s: seen.append(_rows_fast(s, 10, -1)) or s)(torch.zeros(3, 4, 1024))
    assert seen == [False]

"""N:M sparsity: the spec parser, the allocator's contract and errors, gradual N:M, the NNI-only paths'
rejection of the config key, and 2:4 semi-structured weights on CUDA."""

from __future__ import annotations

import functools

import pytest
import torch

import purecompress as pc
from purecompress import llm
from purecompress.compat import LevelPruner


@pytest.mark.parametrize(("spec", "expected"), [("2:4", (2, 4)), (" 4 : 8 ", (4, 8)), ((1, 4), (1, 4)),
                                                 ([3, 8], (3, 8))])
def test_parse_n_m_accepts_strings_and_pairs(spec: object, expected: tuple[int, int]) -> None:
    assert llm.parse_n_m(spec) == expected


@pytest.mark.parametrize("spec", ["2/4", "2:", "a:b", "4:4", "0:4", "5:4", (2, 4, 8), (2.0, 4), (True, 4), None, 24])
def test_parse_n_m_names_the_key_on_bad_input(spec: object) -> None:
    with pytest.raises(pc.ConfigError, match=r"config_list\[3\]\['sparse_pattern'\]") as info:
        llm.parse_n_m(spec, index=3)
    assert info.value.key == "sparse_pattern" and info.value.index == 3


def test_the_n_m_config_key_runs_through_select_and_prune_and_nni_paths_reject_it() -> None:
    entry = {"op_types": ["Linear"], "sparse_pattern": "2:4"}
    (config,) = pc.from_config_list([entry])
    assert config.n_m == (2, 4) and config.sparsity_per_layer == 0.5
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.ReLU(), torch.nn.Linear(6, 4))
    plan = pc.select(model, pc.from_config_list([entry, {"sparsity": 0.5, "op_names": ["2"]}]))
    masks = pc.prune(pc.params_of(model), plan, pc.level)
    groups = masks["0.weight"].keep.reshape(6, 2, 4)
    assert (groups.sum(-1) == 2).all()  # exactly 2 of every 4 along the input dim
    assert masks["2.weight"].sparsity() == 0.5  # the other config: plain per-layer
    with pytest.raises(ValueError, match="element-granularity"):
        pc.prune(pc.params_of(model), plan, pc.l1_norm)
    with pytest.raises(ValueError, match="per layer"):
        pc.prune(pc.params_of(model), plan, pc.level, distribution="global")
    with pytest.raises(pc.ConfigError, match="'sparse_pattern'.*prunes 0.5"):
        pc.from_config_list([{"sparsity": 0.7, "op_types": ["Linear"], "sparse_pattern": "2:4"}])
    with pytest.raises(pc.ConfigError, match="'sparse_pattern'.*total_sparsity"):
        pc.from_config_list([{"total_sparsity": 0.5, "op_types": ["Linear"], "sparse_pattern": "2:4"}])
    with pytest.raises(pc.ConfigError, match="'sparse_pattern'"):
        LevelPruner(torch.nn.Sequential(torch.nn.Linear(8, 8)), [{"sparsity": 0.5, **entry}])


def test_allocate_n_m_groups_run_along_the_input_dim_of_convs_too() -> None:
    score = torch.arange(16.0).reshape(1, 2, 2, 4).flip(-1)
    keep = llm.allocate_n_m({"c": pc.Metric(score, (1, 2, 2, 4))}, 1, 4)["c"].keep
    assert keep.shape == (1, 2, 2, 4)
    assert keep.reshape(-1, 4).tolist() == [[True, False, False, False]] * 4
    assert llm.n_m_sparsity(1, 4) == 0.75


def test_allocate_n_m_per_layer_n_and_nan_scores_are_least_important() -> None:
    score = torch.tensor([[float("nan"), 1.0, 2.0, 3.0]])
    masks = llm.allocate_n_m({"a": pc.Metric(score, (1, 4)), "b": pc.Metric(score, (1, 4))}, {"a": 3, "b": 1}, 4)
    assert masks["a"].keep.tolist() == [[False, True, True, True]]
    assert masks["b"].keep.tolist() == [[False, False, False, True]]


def test_allocate_n_m_rejects_block_metrics_and_misaligned_widths() -> None:
    with pytest.raises(ValueError, match="element-granularity"):
        llm.allocate_n_m(pc.l1_norm({"w": torch.ones(4, 8)}, ["w"]), 2, 4)
    with pytest.raises(ValueError, match="multiple of 4"):
        llm.allocate_n_m(pc.level({"w": torch.ones(4, 6)}, ["w"]), 2, 4)
    with pytest.raises(ValueError, match="rank >= 2"):
        llm.allocate_n_m(pc.level({"b": torch.ones(8)}, ["b"]), 2, 4)
    with pytest.raises(ValueError, match="0 < N <= M"):
        llm.n_m_keep(torch.ones(2, 4), 5, 4)


def test_n_m_masks_compose_with_the_core() -> None:
    params = {"fc.weight": torch.randn(4, 8), "fc.bias": torch.randn(4)}
    masks = llm.magnitude_masks(params, ["fc.weight"], n_m="2:4")
    report = pc.sparsity_report(params, masks)
    assert report.layers[0].sparsity == 0.5
    with_bias = pc.bias_masks(masks, {k: tuple(v.shape) for k, v in params.items()})
    assert with_bias["fc.bias"].sparsity() == 0.0  # every row keeps 2 of 4: the bias stays dense


def test_gradual_n_m_never_unprunes_and_ends_exactly_n_of_m() -> None:
    params = {"w": torch.randn(6, 16, generator=torch.Generator().manual_seed(0))}
    schedule = functools.partial(pc.agp_schedule, final=llm.n_m_sparsity(2, 8), begin=0, end=6)
    prune = llm.gradual_n_m(schedule, ["w"], n=2, m=8)
    state = prune.init(params)
    kept_before, kept_counts = None, []
    for _ in range(8):
        out, state = prune.update(params, state)
        keep = state.masks["w"].keep if state.masks else torch.ones(6, 16, dtype=torch.bool)
        if kept_before is not None:
            assert not bool((keep & ~kept_before).any())
        kept_before = keep
        kept_counts.append(int(keep.sum()))
        assert torch.equal(out["w"] == 0, ~keep)
    assert kept_counts == sorted(kept_counts, reverse=True)
    assert bool((kept_before.reshape(6, 2, 8).sum(-1) == 2).all())
    assert state.sparsity == 0.75


def test_gradual_n_m_with_a_wanda_metric() -> None:
    w = torch.randn(4, 8)
    metrics = {"w": llm.wanda_metric(w, torch.arange(1.0, 9.0))}
    prune = llm.gradual_n_m(lambda step: 0.5, ["w"], n=2, m=4)
    out, state = prune.update({"w": w}, prune.init({"w": w}), metrics=metrics)
    assert torch.equal(state.masks["w"].keep, llm.allocate_n_m(metrics, 2, 4)["w"].keep)


def test_to_semi_structured_needs_cuda_tensors_and_2_of_4_masks() -> None:
    params = {"w": torch.randn(8, 8)}
    with pytest.raises(ValueError, match="CUDA"):
        llm.to_semi_structured(params, llm.magnitude_masks(params, ["w"], n_m="2:4"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="semi-structured sparse kernels need CUDA")
def test_semi_structured_weights_match_the_masked_dense_model() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(128, 256), torch.nn.ReLU(), torch.nn.Linear(256, 128))
    model = model.half().cuda()
    params = pc.params_of(model)
    masks = llm.magnitude_masks(params, ["0.weight", "2.weight"], n_m="2:4")
    x = torch.randn(64, 128, device="cuda", dtype=torch.half)
    dense = torch.func.functional_call(model, pc.apply_masks(params, masks), (x,))
    sparse = torch.func.functional_call(model, llm.to_semi_structured(params, masks), (x,))
    torch.testing.assert_close(sparse, dense, rtol=1e-2, atol=1e-2)
    with pytest.raises(ValueError, match="not 2:4"):
        llm.to_semi_structured(params, llm.magnitude_masks(params, ["0.weight"], n_m="1:4"))


@pytest.mark.parametrize("m", [2, 3, 4, 8])
def test_pairwise_n_m_selection_equals_keep_top_with_ties_and_nan(m: int) -> None:
    from purecompress.pruning._allocators import keep_top
    from purecompress.pruning._n_m import _keep_top_pairwise

    torch.manual_seed(m)
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        groups = torch.randint(0, 3, (64, 32, m)).to(dtype)  # many ties
        groups[torch.rand(groups.shape) < 0.05] = float("nan")
        for n in range(1, m + 1):
            assert torch.equal(_keep_top_pairwise(groups, n), keep_top(groups, n, -1))

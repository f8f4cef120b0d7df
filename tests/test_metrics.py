"""Example tests of the metrics, with NNI's exact vectors from NNI_PARITY.md."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import purecompress as pc


def test_level_is_abs_per_element() -> None:
    m = pc.level({"w": torch.tensor([[-3.0, 1.0], [0.0, -0.5]])}, ["w"])["w"]
    assert torch.equal(m.score, torch.tensor([[3.0, 1.0], [0.0, 0.5]]))
    assert m.shape == (2, 2) and m.block == (1, 1)


def test_l2_of_ones_per_channel_is_3() -> None:  # NNI_PARITY: L2 of ones(3,3,3) per channel = 3
    m = pc.l2_norm({"w": torch.ones(3, 3, 3)}, ["w"])["w"]
    assert m.score.shape == (3, 1, 1) and torch.equal(m.score.flatten(), torch.full((3,), 3.0))


def test_l1_per_channel() -> None:
    w = torch.arange(5.0).view(5, 1, 1, 1).expand(5, 1, 5, 5)
    assert torch.equal(pc.l1_norm({"w": w}, ["w"])["w"].score.flatten(), torch.tensor([0.0, 25, 50, 75, 100]))


def test_lp_norm_matches_torch_norm() -> None:
    w = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    m = pc.lp_norm({"w": w}, ["w"], p=3.0)["w"]
    assert torch.allclose(m.score.flatten(), w.norm(p=3, dim=1))


def test_norms_per_any_block() -> None:
    t = torch.arange(24.0).view(4, 6)
    m = pc.l1_norm({"w": t}, ["w"], block=pc.Block((2, 3)))["w"]
    assert m.score.shape == (2, 2) and m.block == (2, 3)
    assert torch.equal(m.score, torch.tensor([[24.0, 42.0], [96.0, 114.0]]))


def test_channel_norm_of_1d_and_one_element_params() -> None:
    m = pc.l1_norm({"b": torch.tensor([-1.0, 2.0]), "s": torch.tensor([5.0])}, ["b", "s"])
    assert torch.equal(m["b"].score, torch.tensor([1.0, 2.0]))
    assert torch.equal(m["s"].score, torch.tensor([5.0]))


def test_blocks_that_do_not_tile_raise_value_error() -> None:
    with pytest.raises(ValueError, match="do not tile"):
        pc.l1_norm({"w": torch.ones(4, 6)}, ["w"], block=pc.Block((3, 3)))


def test_missing_targets_raise_key_error() -> None:
    with pytest.raises(KeyError, match="targets not in params"):
        pc.level({"w": torch.ones(2)}, ["w", "v"])


def test_fpgm_two_rows() -> None:  # NNI_PARITY: Dist of rows [[1,2],[4,6]] = [5,5]
    assert torch.equal(pc.fpgm({"w": torch.tensor([[1.0, 2.0], [4.0, 6.0]])}, ["w"])["w"].score.flatten(),
                       torch.tensor([5.0, 5.0]))


def test_fpgm_equals_a_loop_over_filters_and_identical_filters_are_zero_apart() -> None:
    w = torch.randn(7, 3, 2, 2, generator=torch.Generator().manual_seed(1))
    w[3] = w[5]
    score = pc.fpgm({"w": w}, ["w"])["w"].score.flatten()
    flat = w.reshape(7, -1)
    loop = torch.stack([sum(torch.linalg.vector_norm(flat[i] - flat[j]) for j in range(7)) for i in range(7)])
    assert torch.allclose(score, loop, atol=1e-5)
    assert torch.linalg.vector_norm(flat[3] - flat[5]) == 0


@pytest.mark.parametrize(("sparsity", "kept"), [(0.2, [125] * 4 + [0, 0] + [125] * 4),
                                                (0.6, [125, 125] + [0] * 6 + [125, 125])])
def test_fpgm_nni_vectors(sparsity: float, kept: list[int]) -> None:
    w = torch.stack([(i + 1) * torch.ones(5, 5, 5) for i in range(10)])
    masks = pc.allocate_per_layer(pc.fpgm({"w": w}, ["w"]), sparsity)
    sums = masks["w"].to_dense().sum((1, 2, 3))
    assert sums.tolist() == kept


def test_l1_nni_vector() -> None:  # L1 on w_i = i*ones: 5 filters at 0.2 -> [0,25,25,25,25]
    w = torch.stack([i * torch.ones(5, 5) for i in range(5)])
    masks = pc.allocate_per_layer(pc.l1_norm({"w": w}, ["w"]), 0.2)
    assert masks["w"].to_dense().sum((1, 2)).tolist() == [0, 25, 25, 25, 25]


def test_metric_by_builds_new_metrics() -> None:
    w = torch.tensor([[1.0, -2.0], [3.0, 0.0]])
    m = pc.metric_by({"w": w}, ["w"], lambda b: b.amax(-1), block=pc.Block.channel())["w"]
    assert torch.equal(m.score, torch.tensor([[1.0], [3.0]]))


def test_metrics_from_a_plan_use_its_weight_targets_and_are_detached() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    plan = pc.select(model, pc.from_config_list([{"sparsity": 0.5, "op_types": ["Linear"]}]))
    params = dict(model.named_parameters())  # requires_grad tensors
    for metric in (pc.level, pc.l1_norm, pc.l2_norm, pc.fpgm):
        out = metric(params, plan)
        assert list(out) == ["0.weight", "2.weight"]
        assert not any(m.score.requires_grad for m in out.values())


def test_nan_weights_give_nan_scores_that_are_pruned_first() -> None:
    w = torch.tensor([[1.0, 1.0], [float("nan"), 0.0], [5.0, 5.0]])
    m = pc.l1_norm({"w": w}, ["w"])
    assert m["w"].score[1].isnan().all()
    assert pc.allocate_per_layer(m, 0.34)["w"].keep.flatten().tolist() == [True, False, True]

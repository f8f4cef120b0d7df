"""Movement pruning and ADMM as init/update transforms."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad

import purecompress as pc
from purecompress.pruning import (
    admm,
    admm_masks,
    admm_metric,
    admm_penalty,
    apply_movement,
    cubic_sparsity,
    movement,
    movement_masks,
    movement_regularizer,
    movement_scores,
    straight_through,
)


def test_cubic_schedule_matches_nni_formula_and_validates() -> None:
    assert cubic_sparsity(3, 0.5, warm_up=4, cool_down=8) == 0.0
    assert cubic_sparsity(6, 0.5, warm_up=4, cool_down=8) == pytest.approx(0.5 * (1 - 0.5**3))
    assert cubic_sparsity(100, 0.5, warm_up=4, cool_down=8) == 0.5
    with pytest.raises(ValueError, match="warm_up"):
        cubic_sparsity(0, 0.5, warm_up=3, cool_down=3)


def test_straight_through_under_torch_func_grad() -> None:
    g = grad(lambda s: (straight_through(s, torch.tensor([1.0, 0.0])) * torch.tensor([2.0, 3.0])).sum())
    assert g(torch.zeros(2)).tolist() == [2.0, 3.0]


def test_movement_masks_hard_exact_and_soft_threshold() -> None:
    scores = {"w": torch.tensor([[3.0, -1.0, 0.5, 2.0, -4.0]])}
    assert movement_masks(scores, 0.4)["w"].keep.tolist() == [[True, False, True, True, False]]
    soft = movement_masks(scores, 0.6, mode="soft")["w"].keep  # sigmoid(S) > 0.6 <=> S > 0.405
    assert soft.tolist() == [[True, False, True, True, False]]
    with pytest.raises(ValueError, match="hard"):
        movement_masks(scores, 0.5, mode="medium")  # type: ignore[arg-type]


def _train_movement(mode: str, regular_scale: float | None = None) -> tuple[dict, object]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    params = {k: v.clone() for k, v in pc.params_of(model).items()}
    x, y = torch.randn(64, 8), torch.randint(0, 4, (64,))
    tx = movement(["0.weight", "2.weight"], 0.5, warm_up=1, cool_down=6, mode=mode, regular_scale=regular_scale)
    state = tx.init(params)

    def loss(p: dict) -> torch.Tensor:
        return F.cross_entropy(functional_call(model, p, (x,)), y)

    for _ in range(10):
        masked = pc.apply_masks(params, state.masks)
        g = grad(loss)(masked)
        params = {k: v - 0.1 * (state.masks[k].apply(g[k]) if k in state.masks else g[k]) for k, v in params.items()}
        _, state = tx.update(params, state, grads=g)
    return params, state


def test_movement_hard_reaches_the_exact_final_sparsity() -> None:
    _, state = _train_movement("hard")
    assert state.step == 10
    assert [state.masks[n].sparsity() for n in ("0.weight", "2.weight")] == [0.5, 0.5]
    assert set(movement_scores(state)) == {"0.weight", "2.weight"}


def test_movement_soft_prunes_by_threshold_and_regularizer_prunes_more() -> None:
    _, plain = _train_movement("soft")
    _, regular = _train_movement("soft", regular_scale=50.0)
    plain_s = sum(m.sparsity() for m in plain.masks.values())
    regular_s = sum(m.sparsity() for m in regular.masks.values())
    assert 0 < plain_s and regular_s >= plain_s
    assert movement_regularizer(plain.scores, 2.0).item() > 0


def test_movement_score_gradient_is_minus_weight_times_grad() -> None:
    params = {"w": torch.tensor([1.0, -2.0, 3.0])}
    tx = movement(["w"], 0.34, warm_up=0, cool_down=1)
    out, state = tx.update(params, tx.init(params), grads={"w": torch.tensor([1.0, 1.0, -1.0])})
    # Adam's first step moves each score by -lr * sign(w * g): w*g = [1, -2, -3]
    torch.testing.assert_close(state.scores["w"], torch.tensor([-0.01, 0.01, 0.01]))
    assert state.masks["w"].keep.tolist() == [False, True, True]
    assert out["w"].tolist() == [0.0, -2.0, 3.0]
    with pytest.raises(ValueError, match="grads"):
        tx.update(params, state)


def test_apply_movement_passes_gradient_to_scores() -> None:
    params = {"w": torch.tensor([1.0, -2.0, 3.0])}
    tx = movement(["w"], 0.34, warm_up=0, cool_down=1)
    _, state = tx.update(params, tx.init(params), grads={"w": torch.tensor([1.0, 1.0, -1.0])})

    def f(scores: dict) -> torch.Tensor:
        s = type(state)(scores, state.masks, state.mu, state.nu, state.step, state.updates)
        return apply_movement(params, s)["w"].sum()

    assert grad(f)(state.scores)["w"].tolist() == [1.0, -2.0, 3.0]


def test_admm_iteration_projects_and_updates_the_dual() -> None:
    params = {"w": torch.tensor([[1.0, -3.0], [0.5, 2.0]])}
    tx = admm(["w"], 0.5, rho=0.1)
    state = tx.init(params)
    assert admm_penalty(params, state).item() == 0.0
    z, state = tx.update(params, state)
    assert z["w"].tolist() == [[0.0, -3.0], [0.0, 2.0]]
    assert state.u["w"].tolist() == [[1.0, 0.0], [0.5, 0.0]]
    expected = 0.1 / 2 * (params["w"] - z["w"] + state.u["w"]).pow(2).sum()
    torch.testing.assert_close(admm_penalty(params, state), expected)
    nni = 0.1 / 2 * (params["w"] - z["w"] + state.u["w"]).norm().sqrt()
    torch.testing.assert_close(admm_penalty(params, state, form="nni"), nni)
    assert admm_masks(params, state)["w"].keep.tolist() == [[False, True], [False, True]]


def test_admm_coarse_grained_prunes_channels_and_penalty_pulls_weights_to_z() -> None:
    torch.manual_seed(0)
    w = torch.randn(6, 3, 2, 2)
    tx = admm(["w"], 0.5, rho=1.0, block=pc.Block.channel())
    z, state = tx.update({"w": w}, tx.init({"w": w}))
    assert state.masks["w"].keep.shape == (6, 1, 1, 1) and state.masks["w"].sparsity() == 0.5
    g = grad(lambda p: admm_penalty(p, state))({"w": w})["w"]
    torch.testing.assert_close(g, w - z["w"] + state.u["w"])
    assert admm_metric({"w": w}, pc.Block.element())["w"].score.shape == w.shape
    with pytest.raises(KeyError, match="rho"):
        admm(["w"], 0.5, rho={"v": 1.0})


def test_admm_metric_option_projects_and_masks_by_that_metric() -> None:
    # filter 0 has the larger L1 norm (4 x 1.0 = 4) but the smaller L2 norm (2 < 3): L2 keeps filter 1
    w = torch.stack([torch.ones(4), torch.tensor([3.0, 0.0, 0.0, 0.0])]).view(2, 1, 2, 2)
    by_l1 = admm(["w"], 0.5, block=pc.Block.channel())
    by_l2 = admm(["w"], 0.5, metric=pc.l2_norm)
    _, s1 = by_l1.update({"w": w}, by_l1.init({"w": w}))
    z2, s2 = by_l2.update({"w": w}, by_l2.init({"w": w}))
    assert s1.masks["w"].keep.flatten().tolist() == [True, False]
    assert s2.masks["w"].keep.flatten().tolist() == [False, True] and z2["w"][0].abs().sum() == 0
    assert admm_masks({"w": w}, s2)["w"].keep.flatten().tolist() == [False, True]

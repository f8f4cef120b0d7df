"""The core composes with torch.func: vmap over candidate sparsities, grad, torch.compile."""

from __future__ import annotations

import pytest
import torch
import torch.utils._pytree as torch_pytree
from torch import nn
from torch.func import functional_call, grad, vmap

import purecompress as pc

SPARSITIES = (0.0, 0.25, 0.5, 0.75, 0.9)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 4))


def _candidates(model: nn.Module) -> tuple[pc.Params, list[pc.Masks]]:
    plan = pc.select(model, pc.from_config_list([{"sparsity": 0.5, "op_types": ["Linear"]}]))
    params = pc.params_of(model)
    metrics = pc.l1_norm(params, plan)
    shapes = {k: tuple(v.shape) for k, v in params.items()}
    return params, [pc.bias_masks(pc.allocate_per_layer(metrics, s), shapes) for s in SPARSITIES]


def test_vmap_over_stacked_masked_params_equals_a_loop() -> None:
    model = _model()
    params, candidates = _candidates(model)
    x = torch.randn(6, 8)
    masked = [pc.apply_masks(params, masks) for masks in candidates]
    stacked = {k: torch.stack([m[k] for m in masked]) for k in params}
    batched = vmap(lambda p: functional_call(model, p, (x,)))(stacked)
    loop = torch.stack([functional_call(model, p, (x,)) for p in masked])
    assert batched.shape == (len(SPARSITIES), 6, 4)
    torch.testing.assert_close(batched, loop)
    assert not torch.equal(loop[0], loop[-1])  # the candidates really differ


def test_vmap_over_stacked_mask_records_with_apply_masks_inside() -> None:
    model = _model()
    params, candidates = _candidates(model)
    x = torch.randn(6, 8)
    # Masks of one layer share their grid across sparsities, so the records stack leaf-wise.
    stacked = torch_pytree.tree_map(lambda *ks: torch.stack(ks), *candidates)
    assert isinstance(stacked["0.weight"], pc.Mask) and stacked["0.weight"].keep.shape == (5, 16, 1)
    batched = vmap(lambda m: functional_call(model, pc.apply_masks(params, m), (x,)))(stacked)
    loop = torch.stack([functional_call(model, pc.apply_masks(params, m), (x,)) for m in candidates])
    torch.testing.assert_close(batched, loop)


def test_grad_flows_through_apply_masks_and_is_zero_where_pruned() -> None:
    model = _model()
    params, candidates = _candidates(model)
    masks = candidates[2]
    x, y = torch.randn(6, 8), torch.randint(0, 4, (6,))

    def loss(p: pc.Params) -> torch.Tensor:
        return nn.functional.cross_entropy(functional_call(model, pc.apply_masks(p, masks), (x,)), y)

    grads = grad(loss)(params)
    assert set(grads) == set(params)
    for name, mask in masks.items():
        keep = mask.to_dense(torch.bool)
        assert torch.all(grads[name][~keep] == 0)
        assert grads[name][keep].abs().sum() > 0
    # same gradients as autograd on the same function
    leaves = {k: v.clone().requires_grad_() for k, v in params.items()}
    loss(leaves).backward()
    for name in params:
        torch.testing.assert_close(grads[name], leaves[name].grad)


def test_grad_accepts_mask_records_as_arguments() -> None:
    # Masks are constants passed as pytree arguments; gradients go to the params (argnums=0).
    model = _model()
    params, candidates = _candidates(model)
    x = torch.randn(2, 8)
    out = grad(lambda p, m: functional_call(model, pc.apply_masks(p, m), (x,)).sum())(params, candidates[1])
    assert set(out) == set(params)


# backend='aot_eager': inductor compiles this model in ~30 s on a 2-core machine (measured), too
# slow for CI; aot_eager still traces apply_masks through dynamo and AOTAutograd.
def test_compiled_masked_forward_matches_eager() -> None:
    model = _model()
    params, candidates = _candidates(model)
    x = torch.randn(6, 8)

    def forward(p: pc.Params, m: pc.Masks, inp: torch.Tensor) -> torch.Tensor:
        return functional_call(model, pc.apply_masks(p, m), (inp,))

    torch._dynamo.reset()
    compiled = torch.compile(forward, backend="aot_eager", fullgraph=True)
    for masks in candidates[1:3]:
        torch.testing.assert_close(compiled(params, masks, x), forward(params, masks, x))
    torch._dynamo.reset()


def test_keep_top_under_vmap_equals_a_loop() -> None:
    scores = torch.randint(0, 4, (7, 10), generator=torch.Generator().manual_seed(0)).float()
    scores[2, 3] = float("nan")
    for k in (0, 3, 10):
        batched = vmap(lambda s, k=k: pc.keep_top(s, k))(scores)
        loop = torch.stack([pc.keep_top(s, k) for s in scores])
        assert torch.equal(batched, loop)
        assert torch.all(batched.sum(-1) == k)


def test_mask_apply_under_vmap_over_tensors_and_over_masks() -> None:
    ts = torch.randn(5, 4, 6)
    mask = pc.Mask(torch.tensor([[True, False, True]]), (4, 6))  # blocks of 4x2: not broadcastable
    assert torch.equal(vmap(mask.apply)(ts), torch.stack([mask.apply(t) for t in ts]))
    keeps = torch.rand(5, 4, 1, generator=torch.Generator().manual_seed(0)) > 0.5
    spec = torch_pytree.tree_structure(pc.Mask(keeps[0], (4, 6)))
    masks = torch_pytree.tree_unflatten([keeps], spec)  # a batch of channel masks as one record
    batched = vmap(lambda m, t: m.apply(t))(masks, ts)
    assert torch.equal(batched, torch.stack([pc.Mask(k, (4, 6)).apply(t) for k, t in zip(keeps, ts)]))


@pytest.mark.parametrize("k", [1, 2])
def test_keep_top_compiles(k: int) -> None:
    torch._dynamo.reset()
    f = torch.compile(lambda s: pc.keep_top(s, k), backend="aot_eager", fullgraph=True)
    s = torch.tensor([3.0, 1.0, 3.0, 0.0])
    assert torch.equal(f(s), pc.keep_top(s, k))
    torch._dynamo.reset()


def _mlp_plan(config: dict[str, object]) -> tuple[nn.Module, pc.Params, pc.Plan]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    return model, pc.params_of(model), pc.select(model, pc.from_config_list([config]))


@pytest.mark.parametrize("config", [{"sparsity": 0.5, "op_types": ["Linear"]},
                                    {"total_sparsity": 0.5, "op_types": ["Linear"]}])
def test_prune_compiles_with_fullgraph_and_no_graph_break(config: dict[str, object]) -> None:
    torch._dynamo.reset()
    _, params, plan = _mlp_plan(config)
    distribution = "global" if "total_sparsity" in config else "per_layer"
    run = lambda p: pc.prune(p, plan, pc.l1_norm, distribution=distribution)  # noqa: E731
    compiled = torch.compile(run, fullgraph=True)(params)
    eager = run(params)
    assert set(compiled) == set(eager)
    for name in eager:
        assert torch.equal(compiled[name].keep, eager[name].keep)
    explained = torch._dynamo.explain(run)(params)
    assert explained.graph_break_count == 0


def test_compiled_masked_training_step_has_no_graph_break() -> None:
    torch._dynamo.reset()
    model, params, plan = _mlp_plan({"sparsity": 0.5, "op_types": ["Linear"]})
    masks = pc.prune(params, plan, pc.l1_norm)
    weights = {k: v.clone().requires_grad_() for k, v in params.items()}
    x, y = torch.randn(8, 16), torch.randint(0, 4, (8,))

    def loss(w: dict[str, torch.Tensor]) -> torch.Tensor:
        return nn.functional.cross_entropy(functional_call(model, pc.apply_masks(w, masks), (x,)), y)

    step = grad(loss)  # forward, loss and backward in one function
    assert torch._dynamo.explain(step)(weights).graph_break_count == 0
    eager = step(weights)
    compiled = torch.compile(step, fullgraph=True)(weights)
    for name in eager:
        assert torch.allclose(compiled[name], eager[name], atol=1e-6)
    assert torch.all(compiled["0.weight"][~masks["0.weight"].keep.expand(32, 16)] == 0)


def test_prune_under_vmap_over_a_tensor_of_sparsities() -> None:
    _, params, plan = _mlp_plan({"sparsity": 0.5, "op_types": ["Linear"]})
    metrics = pc.l1_norm(params, plan)
    s = torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)
    batched = vmap(lambda v: pc.allocate_per_layer(metrics, v))(s)
    for i, value in enumerate(s.tolist()):
        for name, mask in pc.allocate_per_layer(metrics, value).items():
            assert torch.equal(batched[name].keep[i], mask.keep)
    kept = batched["0.weight"].keep.reshape(3, -1).sum(-1).tolist()
    assert kept == [32 - int(v * 32) for v in s.tolist()]

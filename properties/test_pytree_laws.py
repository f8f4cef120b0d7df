"""Laws of records as pytrees, and purity: no core function modifies its inputs."""

from __future__ import annotations

import copy

import optree
import torch
import torch.utils._pytree as torch_pytree
from hypothesis import given
from hypothesis import strategies as st

import purecompress as pc
from properties.strategies import masks_for, metric_sets, params_and_masks, shapes, sparsities
from purecompress._pytree import tree_map


@st.composite
def _records(draw: st.DrawFn) -> object:
    shape = draw(shapes())
    mask = draw(masks_for(shape))
    metric = pc.Metric(mask.keep.float() * 3 - 1, shape)
    return draw(st.sampled_from([mask, metric, {"a": mask, "b": [metric, (mask,)]}]))


@given(_records())
def test_records_round_trip_through_optree(tree: object) -> None:
    leaves, spec = optree.tree_flatten(tree, namespace=pc.NAMESPACE)
    assert all(isinstance(leaf, torch.Tensor) for leaf in leaves)
    assert pc.trees_equal(optree.tree_unflatten(spec, leaves), tree)


@given(_records())
def test_records_round_trip_through_torch_pytree(tree: object) -> None:
    leaves, spec = torch_pytree.tree_flatten(tree)
    assert all(isinstance(leaf, torch.Tensor) for leaf in leaves)
    assert pc.trees_equal(torch_pytree.tree_unflatten(leaves, spec), tree)


@given(_records())
def test_tree_map_identity_is_identity(tree: object) -> None:
    assert pc.trees_equal(tree_map(lambda x: x, tree), tree)
    assert pc.trees_equal(torch_pytree.tree_map(lambda x: x, tree), tree)


def _snapshot(tree: object) -> tuple[object, list[int]]:
    """A deep copy and the version counters of every tensor (in-place ops bump them)."""
    leaves = optree.tree_leaves(tree, namespace=pc.NAMESPACE)
    return copy.deepcopy(tree), [t._version for t in leaves if isinstance(t, torch.Tensor)]


def _unchanged(tree: object, snap: tuple[object, list[int]]) -> bool:
    leaves = optree.tree_leaves(tree, namespace=pc.NAMESPACE)
    versions = [t._version for t in leaves if isinstance(t, torch.Tensor)]
    return pc.trees_equal(tree, snap[0]) and versions == snap[1]


@given(params_and_masks(), metric_sets(), sparsities())
def test_no_core_function_modifies_its_inputs(pm: tuple[pc.Params, pc.Masks], metrics: pc.Metrics,
                                             s: float) -> None:
    params, masks = pm
    names = list(params)
    inputs = {"params": params, "masks": masks, "metrics": metrics}
    snaps = {k: _snapshot(v) for k, v in inputs.items()}
    for metric in (pc.level, pc.l1_norm, pc.l2_norm, pc.fpgm):
        metric(params, names)
    pc.lp_norm(params, names, p=3.0)
    pc.metric_by(params, names, lambda b: b.sum(-1), block=pc.Block.element())
    pc.apply_masks(params, masks)
    pc.sparsity_report(params, masks)
    pc.bias_masks(masks, {n.replace("weight", "bias"): (t.shape[0],) for n, t in params.items()})
    for name, mask in masks.items():
        mask.apply(params[name])
        mask.to_dense(), mask.kept(), mask.sparsity(), mask & mask
    prior = {n: pc.Mask.from_dense(m.score.new_ones(m.shape) > 0) for n, m in metrics.items()}
    snaps["prior"] = _snapshot(prior)
    pc.allocate_per_layer(metrics, s, prior=prior)
    pc.allocate_global(metrics, s, prior=prior)
    pc.allocate_balanced(metrics, s, gran=[1], prior=prior)
    pc.allocate_threshold(metrics, 2.0, prior=prior)
    for metric in metrics.values():
        pc.keep_top(metric.score.flatten(), 1)
    inputs["prior"] = prior
    for key, value in inputs.items():
        assert _unchanged(value, snaps[key]), key


@given(st.integers(0, 2**16), sparsities(), st.sampled_from(["per_layer", "global", "balanced"]))
def test_pipeline_does_not_modify_the_model_or_its_params(seed: int, s: float, distribution: str) -> None:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                                torch.nn.Linear(4, 3))
    state = copy.deepcopy(model.state_dict())
    config_list = [{"sparsity": s, "op_types": ["default"]}]
    snap_config = copy.deepcopy(config_list)
    plan = pc.select(model, pc.from_config_list(config_list))
    params = pc.params_of(model)
    snap = _snapshot(params)
    masks = pc.prune(params, plan, pc.l1_norm if distribution != "balanced" else pc.level,
                     distribution=distribution, balance_gran=[1])
    pc.sparsity_report(params, masks, plan)
    pc.apply_masks(params, masks)
    assert _unchanged(params, snap)
    assert config_list == snap_config
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())

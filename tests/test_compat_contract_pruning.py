"""The contract of the pruning compat layer, without NNI: each compat pruner's masks equal, bit for
bit, those of the core pipeline it delegates to (same model, same data, same trainer).

One case per (compat pruner, core function) pair that computes numbers. Training-aware pruners
run the same trainer on both sides; the statistic pruners (APoZ, mean rank, Taylor FO) train with
``lr=0`` so that the core's fixed-parameter collectors see the weights the compat hooks saw.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

import purecompress as pc
from purecompress import compat
from purecompress.graph import capture, channel_dependency, group_dependency


class Net(nn.Module):
    """Conv-BN, a residual add (a channel dependency) and two linear layers."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc1 = nn.Linear(8, 10)
        self.fc2 = nn.Linear(10, 4)

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(y + self.conv2(y))
        return self.fc2(F.relu(self.fc1(y.mean((2, 3)))))


_g = torch.Generator().manual_seed(7)
BATCHES = [(torch.randn(4, 3, 6, 6, generator=_g), torch.randint(0, 4, (4,), generator=_g)) for _ in range(3)]
DUMMY = torch.randn(1, 3, 6, 6)
CONV_LINEAR = [{"sparsity": 0.5, "op_types": ["Conv2d", "Linear"]}]
CONV = [{"sparsity": 0.5, "op_types": ["Conv2d"]}]


def model() -> Net:
    torch.manual_seed(0)
    return Net()


def trainer(model: nn.Module, optimizer: torch.optim.Optimizer, criterion: Callable) -> None:
    model.train()
    for x, y in BATCHES:
        optimizer.zero_grad()
        criterion(model(x), y).backward()
        optimizer.step()


def legacy(lr: float, m: nn.Module) -> dict[str, Any]:
    """The old NNI training arguments (trainer, traced optimizer, criterion)."""
    return {"trainer": trainer, "traced_optimizer": compat.trace(torch.optim.SGD)(m.parameters(), lr=lr),
            "criterion": F.cross_entropy}


def plan_of(m: nn.Module, config: list[dict]) -> pc.Plan:
    return pc.select(m, pc.from_config_list(config))


def with_bias(masks: pc.Masks, plan: pc.Plan) -> pc.Masks:
    return pc.bias_masks(masks, {k: v for entry in plan for k, v in entry.params.items()})


def dependency(m: nn.Module, metrics: pc.Metrics, plan: pc.Plan) -> pc.Masks:
    graph = capture(m, DUMMY)
    masks = pc.allocate_dependency_aware(metrics, 0.5, channel_sets=channel_dependency(graph),
                                         groups=group_dependency(graph))
    return with_bias(masks, plan)


def assert_same(nni_masks: dict, core: pc.Masks) -> None:
    got = {f"{m}.{t}": v for m, ts in nni_masks.items() for t, v in ts.items() if v is not None}
    assert sorted(got) == sorted(core)
    for name, mask in core.items():
        assert torch.equal(got[name], mask.to_dense(got[name].dtype)), name


# --- one-shot pruners: compat class vs (metric, allocation)


def _one_shot(cls: type, config: list[dict], metric: Callable, allocation: str = "per_layer",
              **kwargs: Any) -> tuple[dict, pc.Masks]:
    m = model()
    plan = plan_of(m, config)
    params = pc.params_of(m)
    if allocation == "dependency":
        core = dependency(m, metric(params, plan), plan)
    elif allocation == "balanced":
        core = pc.allocate(metric(params, plan), plan, distribution="balanced", balance_gran=[2])
    else:
        core = pc.prune(params, plan, metric)
    _, masks = cls(m, config, **kwargs).compress()
    return masks, core


ONE_SHOT = {
    "level": (compat.LevelPruner, [{"sparsity": 0.5, "op_types": ["default"]}], pc.level, "per_layer", {}),
    "level_balance": (compat.LevelPruner, [{"sparsity": 0.7, "op_types": ["Linear"]}], pc.level, "balanced",
                      {"mode": "balance", "balance_gran": [2]}),
    "l1": (compat.L1NormPruner, CONV_LINEAR, pc.l1_norm, "per_layer", {}),
    "l2": (compat.L2NormPruner, CONV_LINEAR, pc.l2_norm, "per_layer", {}),
    "fpgm": (compat.FPGMPruner, CONV_LINEAR, pc.fpgm, "per_layer", {}),
    "fpgm_dependency_aware": (compat.FPGMPruner, CONV, pc.fpgm, "dependency",
                              {"mode": "dependency_aware", "dummy_input": DUMMY}),
}


@pytest.mark.parametrize("case", list(ONE_SHOT))
def test_one_shot_pruner_masks_equal_the_core_pipeline(case: str) -> None:
    cls, config, metric, allocation, kwargs = ONE_SHOT[case]
    assert_same(*_one_shot(cls, config, metric, allocation, **kwargs))


# --- statistic pruners: compat hooks during training (lr=0) vs the core collectors


def _taylor_core(m: nn.Module, plan: pc.Plan) -> pc.Metrics:
    m.train()
    stats = pc.collect_taylor(m, pc.params_of(m), BATCHES, F.cross_entropy, plan, max_batches=2)
    return pc.taylor_fo(stats, block=pc.Block.channel())


@pytest.mark.parametrize("mode", ["normal", "global", "dependency_aware"])
def test_taylor_fo_masks_equal_collect_taylor_then_allocate(mode: str) -> None:
    config = [{"total_sparsity": 0.5, "op_types": ["Conv2d"]}] if mode == "global" else CONV
    m = model()
    plan = plan_of(m, config)
    metrics = _taylor_core(copy.deepcopy(m), plan)
    if mode == "dependency_aware":
        core = dependency(m, metrics, plan)
    else:
        core = pc.allocate(metrics, plan, distribution="global" if mode == "global" else "per_layer")
    pruner = compat.TaylorFOWeightPruner(m, config, **legacy(0.0, m), training_batches=2, mode=mode,
                                         dummy_input=DUMMY)
    assert_same(pruner.compress()[1], core)


@pytest.mark.parametrize(("cls", "metric"), [(compat.ActivationAPoZRankPruner, pc.apoz),
                                             (compat.ActivationMeanRankPruner, pc.mean_activation)])
def test_activation_pruner_masks_equal_collect_activations_then_allocate(cls: type, metric: Callable) -> None:
    m = model()
    plan = plan_of(m, CONV)
    reference = copy.deepcopy(m).train()
    stats = pc.collect_activations(reference, pc.params_of(reference), BATCHES, plan, max_batches=2)
    core = pc.allocate(metric(stats, pc.params_of(reference)), plan)
    pruner = cls(m, CONV, **legacy(0.0, m), training_batches=8)  # NNI counts samples: 8 = two batches
    assert_same(pruner.compress()[1], core)


def test_slim_masks_equal_training_with_slim_penalty_then_global_bn_scale() -> None:
    config = [{"total_sparsity": 0.5, "op_types": ["BatchNorm2d"]}]
    m = model()
    reference = copy.deepcopy(m)
    plan = plan_of(reference, config)
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.1)
    reference.train()
    for x, y in BATCHES:
        optimizer.zero_grad()
        params = dict(reference.named_parameters())
        (F.cross_entropy(reference(x), y) + pc.slim_penalty(params, plan, 0.01)).backward()
        optimizer.step()
    core = pc.allocate(pc.bn_scale(pc.params_of(reference), plan), plan, distribution="global")
    pruner = compat.SlimPruner(m, config, **legacy(0.1, m), training_epochs=1, scale=0.01, mode="global")
    assert_same(pruner.compress()[1], core)


# --- stateful pruners: compat vs the core transform in the same training loop


@pytest.mark.parametrize("granularity", ["fine-grained", "coarse-grained"])
def test_admm_masks_equal_the_admm_transform_in_the_same_loop(granularity: str) -> None:
    config = [{"sparsity": 0.5, "op_types": ["Conv2d"], "rho": 1e-3}]
    m = model()
    reference = copy.deepcopy(m)
    plan = plan_of(reference, [{k: v for k, v in config[0].items() if k != "rho"}])
    block = pc.Block.element() if granularity == "fine-grained" else pc.Block.channel()
    tx = pc.admm(plan, 0.5, rho=1e-3, block=block)
    state = tx.init(pc.params_of(reference))
    for _ in range(2):  # iterations, one epoch each
        optimizer = torch.optim.SGD(reference.parameters(), lr=0.05)
        reference.train()
        for x, y in BATCHES:
            optimizer.zero_grad()
            penalty = pc.admm_penalty(dict(reference.named_parameters()), state, form="nni")
            (F.cross_entropy(reference(x), y) + penalty).backward()
            optimizer.step()
        _, state = tx.update(pc.params_of(reference), state)
    core = with_bias(pc.admm_masks(pc.params_of(reference), state), plan)
    pruner = compat.ADMMPruner(m, copy.deepcopy(config), **legacy(0.05, m), iterations=2, training_epochs=1,
                               granularity=granularity)
    assert_same(pruner.compress()[1], core)


def movement_loop(reference: nn.Module, tx: Any, names: list[str], batches: Any,
                  logits: Any = lambda out: out) -> Any:
    """Train ``reference`` (SGD, lr 0.05, 2 epochs) with ``tx``'s masks applied, the movement
    transform updated from the masked weights' gradients each step, as the compat pruner's loop
    does; the final state."""
    state = tx.init(pc.params_of(reference))
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.05)
    reference.train()
    for _ in range(2):  # epochs
        for x, y in batches:
            optimizer.zero_grad()
            masked = pc.apply_masks(dict(reference.named_parameters()), state.masks)
            for name in names:
                masked[name].retain_grad()
            out = functional_call(reference, {**masked, **dict(reference.named_buffers())}, (x,))
            F.cross_entropy(logits(out), y).backward()
            grads = {n: masked[n].grad for n in names}
            _, state = tx.update(pc.params_of(reference), state, grads=grads)
            optimizer.step()
    return state


def test_movement_masks_equal_the_movement_transform_in_the_same_loop() -> None:
    config = [{"sparsity": 0.5, "op_types": ["Linear"]}]
    m = model()
    reference = copy.deepcopy(m)
    plan = plan_of(reference, config)
    names = list(plan.targets())
    state = movement_loop(reference, pc.movement(plan, 0.5, warm_up=0, cool_down=4), names, BATCHES)
    core = with_bias({n: state.masks[n] for n in names}, plan)
    pruner = compat.MovementPruner(m, config, **legacy(0.05, m), training_epochs=2, warm_up_step=0,
                                   cool_down_beginning_step=4)
    assert_same(pruner.compress()[1], core)


# --- iterative pruners: compat scheduler vs the core schedule driving one-shot pruning


@pytest.mark.parametrize(("cls", "kind"), [(compat.LinearPruner, "linear"), (compat.AGPPruner, "agp"),
                                           (compat.LotteryTicketPruner, "lottery")])
def test_iterative_pruner_masks_equal_the_schedule_driving_l1(cls: type, kind: str, tmp_path: Any) -> None:
    m = model()
    params, masks = pc.params_of(copy.deepcopy(m)), {}
    for sparsity in pc.iteration_sparsities(kind, 0.5, 2):
        # Without speedup each task prunes the masked model afresh at the task's absolute sparsity
        # (the compact model has the origin's shapes, so the relative sparsity is the absolute one).
        config = [{"sparsity": sparsity, "op_types": ["Conv2d", "Linear"]}]
        current = pc.apply_masks(params, masks)
        masks = pc.prune(current, plan_of(m, config), pc.l1_norm)
    pruner = cls(m, copy.deepcopy(CONV_LINEAR), "l1", 2, log_dir=str(tmp_path))
    pruner.compress()
    _, _, best_masks, _, _ = pruner.get_best_result()
    assert_same(best_masks, masks)

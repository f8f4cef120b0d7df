"""Data-driven metrics and their loss terms."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import purecompress as pc
from purecompress.pruning import (
    TaylorStats,
    apoz,
    batch_activation_stats,
    bn_scale,
    mean_activation,
    slim_penalty,
    taylor_fo,
)


def test_apoz_is_one_minus_the_zero_fraction_per_conv_channel() -> None:
    out = torch.tensor([[[[0.0, 1.0], [2.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]], [[1.0, 1.0], [1.0, 1.0]]]])
    stats = {"conv": batch_activation_stats(out, -3)}
    metric = apoz(stats, {"conv.weight": torch.zeros(3, 2, 1, 1)})["conv.weight"]
    assert metric.shape == (3, 2, 1, 1)
    assert metric.score.flatten().tolist() == [0.5, 0.0, 1.0]
    mean = mean_activation(stats, {"conv.weight": torch.zeros(3, 2, 1, 1)})["conv.weight"]
    assert mean.score.flatten().tolist() == [0.75, 0.0, 1.0]


def test_activation_metrics_check_params() -> None:
    stats = {"fc": batch_activation_stats(torch.ones(2, 3), -1)}
    with pytest.raises(KeyError, match="fc.weight"):
        apoz(stats, {})
    with pytest.raises(ValueError, match="output channels"):
        apoz(stats, {"fc.weight": torch.zeros(4, 2)})


def test_taylor_metric_sums_blocks_and_allocates() -> None:
    score = torch.tensor([[1.0, 1.0], [5.0, 0.0], [0.0, 0.5]])
    metrics = taylor_fo({"w": TaylorStats(score, 3)})
    assert metrics["w"].score.flatten().tolist() == [2.0, 5.0, 0.5]
    assert pc.allocate_per_layer(metrics, 0.34)["w"].keep.flatten().tolist() == [True, True, False]
    fine = taylor_fo({"w": TaylorStats(score, 3)}, block=pc.Block.element())
    assert torch.equal(fine["w"].score, score)


def test_bn_scale_and_slim_penalty_gradient() -> None:
    model = nn.Sequential(nn.Conv2d(1, 3, 1), nn.BatchNorm2d(3))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([0.5, -2.0, 0.25]))
    params = pc.params_of(model)
    plan = pc.select(model, pc.from_config_list([{"total_sparsity": 0.3, "op_types": ["BatchNorm2d"]}]))
    metrics = bn_scale(params, plan)
    assert metrics["1.weight"].score.tolist() == [0.5, 2.0, 0.25]
    g = torch.func.grad(lambda p: slim_penalty(p, ["1.weight"], scale=0.1))({"1.weight": params["1.weight"]})
    torch.testing.assert_close(g["1.weight"], torch.tensor([0.1, -0.1, 0.1]))
    assert slim_penalty(params, [], scale=1.0).item() == 0.0


# --- the compat pruners and evaluator (NNI's API over these metrics), without NNI installed

from collections.abc import Callable  # noqa: E402

import torch.nn.functional as F  # noqa: E402

from purecompress.compat import pruning as tp  # noqa: E402
from purecompress.compat.evaluator import (  # noqa: E402
    ForwardHook,
    OptimizerRecipe,
    TorchEvaluator,
    TransformersEvaluator,
)
from purecompress.compat.lightning_evaluator import LightningEvaluator  # noqa: E402
from purecompress.pruning import collect_taylor  # noqa: E402
from purecompress.selectors import ConfigError  # noqa: E402


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 16, 3))


_G = torch.Generator().manual_seed(3)
_DATA = [(torch.randn(4, 2, 6, 6, generator=_G), torch.randint(0, 3, (4,), generator=_G)) for _ in range(3)]


def _trainer(model: nn.Module, optimizer: torch.optim.Optimizer, criterion: Callable) -> None:
    for x, y in _DATA:
        optimizer.zero_grad()
        criterion(model(x), y).backward()
        optimizer.step()


def _old(model: nn.Module, lr: float = 0.1) -> dict:
    return {"trainer": _trainer, "traced_optimizer": torch.optim.SGD(model.parameters(), lr=lr),
            "criterion": F.cross_entropy}


CONV = [{"op_types": ["Conv2d"], "sparsity": 0.5}]


def test_compat_taylor_without_training_equals_the_functional_collector() -> None:
    model = _net()
    params = {k: v.clone() for k, v in pc.params_of(model).items()}
    pruner = tp.TaylorFOWeightPruner(model, CONV, **_old(model, lr=0.0), training_batches=2)
    data = pruner.data_collector.collect()
    expected = collect_taylor(model, params, _DATA, F.cross_entropy, ["0.weight"], max_batches=2)
    torch.testing.assert_close(data["0"]["weight"].score, expected["0.weight"].score)


def test_activation_pruners_count_samples_toward_training_steps() -> None:
    model = _net()
    pruner = tp.ActivationAPoZRankPruner(model, CONV, **_old(model), training_batches=5)
    stats = pruner.data_collector.collect()["0"]["weight"]
    assert (stats.samples, stats.batches) == (8, 2)  # NNI quirk: 4 < 5 -> add, 8 >= 5 -> stop
    pruner.data_collector.collect = lambda: {"0": {"weight": stats}}  # type: ignore[method-assign]
    _, masks = pruner.compress()
    assert masks["0"]["weight"].sum() == 3 * 2 * 3 * 3 and masks["0"]["bias"].sum() == 3


def test_training_pruners_give_clear_errors() -> None:
    model = _net()
    with pytest.raises(ValueError, match="mode"):
        tp.SlimPruner(model, [{"op_types": ["BatchNorm2d"], "total_sparsity": 0.5}], **_old(model), training_epochs=1,
                      mode="local")
    with pytest.raises(ConfigError, match="op_types"):
        tp.SlimPruner(model, [{"op_types": ["Conv2d"], "total_sparsity": 0.5}], **_old(model), training_epochs=1)
    with pytest.raises(ConfigError):
        tp.SlimPruner(model, [{"op_types": ["BatchNorm2d"], "sparsity": 0.5}], **_old(model), training_epochs=1)
    with pytest.raises(ValueError, match="activation"):
        tp.ActivationMeanRankPruner(model, CONV, **_old(model), training_batches=1, activation="swish")
    with pytest.raises(ValueError, match="dummy_input"):
        tp.TaylorFOWeightPruner(model, CONV, **_old(model), training_batches=1, mode="dependency_aware")
    with pytest.raises(ValueError, match="warm_up_step"):
        tp.MovementPruner(model, CONV, **_old(model), training_epochs=1, warm_up_step=3, cool_down_beginning_step=3)
    with pytest.raises(TypeError, match="missing"):
        tp.TaylorFOWeightPruner(model, CONV, _trainer)
    with pytest.raises(ConfigError, match="rho"):
        tp.ADMMPruner(model, [{"op_types": ["Conv2d"], "sparsity": 0.5, "rho": -1.0}], **_old(model),
                      iterations=1, training_epochs=1)


def test_torch_evaluator_contract() -> None:
    model = _net()
    calls: list[str] = []

    def training_func(model: nn.Module, optimizer: torch.optim.Optimizer, criterion: Callable, lr_schedulers: object,
                      max_steps: int | None, max_epochs: int | None) -> None:
        del lr_schedulers, max_epochs
        for x, y in _DATA[:max_steps]:
            optimizer.zero_grad()
            criterion(model(x), y).backward()
            optimizer.step()

    evaluator = TorchEvaluator(training_func, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
                               F.cross_entropy, evaluating_func=lambda m: {"default": 0.5, "acc": 0.5})
    evaluator._init_optimizer_helpers(model)
    evaluator.bind_model(model)
    evaluator.patch_loss(lambda loss: calls.append("loss") or loss)
    evaluator.patch_optimizer_step([lambda: calls.append("before")], [lambda: calls.append("after")])
    evaluator.register_hooks([ForwardHook(model[0], "0", lambda buf: lambda m, i, o: buf.append(o.shape))])
    evaluator.train(max_steps=2)
    assert calls == ["loss", "before", "after"] * 2
    assert len(evaluator.get_all_hooks()[0].buffer) == 2
    assert evaluator.evaluate() == (0.5, {"default": 0.5, "acc": 0.5})
    evaluator.unbind_model()
    assert not model[0]._forward_hooks and evaluator.get_all_hooks() == []
    with pytest.raises(TypeError, match="Lightning Trainer"):  # tests/compat/test_lightning_evaluator.py
        LightningEvaluator(None, None)
    with pytest.raises(NotImplementedError, match="TorchEvaluator"):
        TransformersEvaluator(None)
    scheduler = torch.optim.lr_scheduler.StepLR(torch.optim.SGD(model.parameters(), lr=0.1), 1)
    bad = TorchEvaluator(training_func, scheduler.optimizer, F.cross_entropy, lr_schedulers=scheduler)
    with pytest.raises(TypeError, match="traced"):
        bad._init_optimizer_helpers(model)


def test_optimizer_recipe_rebuilds_groups_by_name() -> None:
    model = _net()
    optimizer = torch.optim.SGD([{"params": model[0].parameters(), "lr": 0.5}, {"params": model[4].parameters()}],
                                lr=0.1, momentum=0.9)
    rebuilt = OptimizerRecipe(model, optimizer).build(model)
    assert [g["lr"] for g in rebuilt.param_groups] == [0.5, 0.1]
    assert rebuilt.param_groups[0]["params"][0] is model[0].weight
    assert rebuilt.defaults["momentum"] == 0.9

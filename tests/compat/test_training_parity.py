"""Training-aware pruners and dependency-aware masks equal NNI 2.10.1's, with identical training.

Both sides train the same copy of the model on the same batches with the same optimizer, so the
deterministic pruners (APoZ, mean rank, Taylor FO, Slim) must give identical masks. ADMM and
movement get NNI's own sparsity-band checks (NNI's ADMM turns its weights to NaN on the first
step, see ``purecompress.admm_penalty``, so its masks are not an oracle).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

nni = pytest.importorskip("nni", reason="parity tests need nni==2.10.1 as the oracle")
nni_pruning = pytest.importorskip("nni.compression.pytorch.pruning")

from purecompress.compat import pruning as ours  # noqa: E402
from purecompress.compat import pruning as pc_pruning  # noqa: E402
from purecompress.compat.evaluator import TorchEvaluator  # noqa: E402
from purecompress.compat.utils import compute_sparsity_mask2compact  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore")  # NNI's own deprecation warnings
logging.getLogger("nni").setLevel(logging.ERROR)


class TorchModel(nn.Module):
    """NNI's pruner test model (test/algo/compression/v2/test_pruner_torch.py)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 10, 5, 1)
        self.bn1 = nn.BatchNorm2d(10)
        self.conv2 = nn.Conv2d(10, 20, 5, 1)
        self.bn2 = nn.BatchNorm2d(20)
        self.fc1 = nn.Linear(4 * 4 * 20, 100)
        self.fc2 = nn.Linear(100, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2, 2)
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2, 2)
        x = F.relu(self.fc1(x.view(-1, 4 * 4 * 20)))
        return F.log_softmax(self.fc2(x), dim=1)


_g = torch.Generator().manual_seed(1024)
BATCHES = [(torch.rand(4, 1, 28, 28, generator=_g), torch.randint(0, 10, (4,), generator=_g)) for _ in range(3)]
CRITERION = nn.CrossEntropyLoss()


def trainer(model: nn.Module, optimizer: torch.optim.Optimizer, criterion: Callable) -> None:
    model.train()
    for x, y in BATCHES:
        optimizer.zero_grad()
        criterion(model(x), y).backward()
        optimizer.step()


def training_func(model: nn.Module, optimizers: Any, criterion: Callable, lr_schedulers: Any = None,
                  max_steps: int | None = None, max_epochs: int | None = None) -> None:
    steps = 0
    for _ in range(max_epochs or 1):
        for x, y in BATCHES:
            if max_steps is not None and steps >= max_steps:
                return
            optimizers.zero_grad()
            criterion(model(x), y).backward()
            optimizers.step()
            steps += 1


@pytest.fixture(scope="module")
def base() -> TorchModel:
    torch.manual_seed(1024)
    return TorchModel()


def _sgd(model: nn.Module, traced: bool = True) -> torch.optim.Optimizer:
    cls = nni.trace(torch.optim.SGD) if traced else torch.optim.SGD
    return cls(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)


def _run(cls: type, base: nn.Module, config: list[dict], **kwargs: Any) -> tuple[nn.Module, dict]:
    model = copy.deepcopy(base)
    pruner = cls(model, copy.deepcopy(config), trainer=trainer, traced_optimizer=_sgd(model),
                 criterion=CRITERION, **kwargs)
    _, masks = pruner.compress()
    pruner._unwrap_model()
    return model, masks


def _assert_same(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for name in a:
        for target in ("weight", "bias"):
            x, y = a[name].get(target), b[name].get(target)
            assert (x is None) == (y is None), (name, target)
            if x is not None:
                assert torch.equal(x, y), (name, target)


def _band(model: nn.Module, masks: dict, config: list[dict]) -> float:
    return compute_sparsity_mask2compact(model, masks, config)[0]["total_sparsity"]


CONV = [{"op_types": ["Conv2d"], "sparsity": 0.8}]
CASES = {
    "apoz": ("ActivationAPoZRankPruner", CONV, {"training_batches": 5, "activation": "relu"}),
    "mean_rank": ("ActivationMeanRankPruner", CONV, {"training_batches": 5, "activation": "relu6"}),
    "taylor": ("TaylorFOWeightPruner", CONV, {"training_batches": 2}),
    "taylor_global": ("TaylorFOWeightPruner", [{"op_types": ["Conv2d"], "total_sparsity": 0.8}],
                      {"training_batches": 2, "mode": "global"}),
    "slim": ("SlimPruner", [{"op_types": ["BatchNorm2d"], "total_sparsity": 0.8}],
             {"training_epochs": 1, "scale": 0.001, "mode": "global"}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_masks_equal_nni_with_identical_training(case: str, base: TorchModel) -> None:
    name, config, kwargs = CASES[case]
    nni_model, nni_masks = _run(getattr(nni_pruning, name), base, config, **kwargs)
    our_model, our_masks = _run(getattr(ours, name), base, config, **kwargs)
    _assert_same(nni_masks, our_masks)
    for (k, a), b in zip(nni_model.state_dict().items(), our_model.state_dict().values()):
        torch.testing.assert_close(a, b, msg=k)
    assert 0.78 < _band(our_model, our_masks, config) < 0.82


def test_dependency_aware_activation_pruner_on_nni_model(base: TorchModel) -> None:
    kwargs = {"training_batches": 5, "mode": "dependency_aware", "dummy_input": torch.rand(2, 1, 28, 28)}
    nni_model, nni_masks = _run(nni_pruning.ActivationAPoZRankPruner, base, CONV, **kwargs)
    our_model, our_masks = _run(ours.ActivationAPoZRankPruner, base, CONV, **kwargs)
    _assert_same(nni_masks, our_masks)


def test_evaluator_api_equals_nni_and_plain_optimizers_work(base: TorchModel) -> None:
    from nni.compression.pytorch import TorchEvaluator as NniEvaluator

    nni_model, our_model = copy.deepcopy(base), copy.deepcopy(base)
    nni_eval = NniEvaluator(training_func, _sgd(nni_model), CRITERION)
    our_eval = TorchEvaluator(training_func, _sgd(our_model, traced=False), CRITERION)
    _, a = nni_pruning.TaylorFOWeightPruner(nni_model, CONV, nni_eval, training_steps=2).compress()
    _, b = ours.TaylorFOWeightPruner(our_model, CONV, our_eval, training_steps=2).compress()
    _assert_same(a, b)


@pytest.mark.parametrize("case", ["admm", "admm_coarse", "movement", "level", "l1", "l2", "fpgm"])
def test_nni_sparsity_bands(case: str, base: TorchModel) -> None:
    dummy = torch.rand(2, 1, 28, 28)
    if case.startswith("admm"):
        config = [{"op_types": ["Conv2d"], "sparsity": 0.8, "rho": 1e-3}]
        granularity = "coarse-grained" if case == "admm_coarse" else "fine-grained"
        model, masks = _run(ours.ADMMPruner, base, config, iterations=2, training_epochs=1, granularity=granularity)
        assert all(torch.isfinite(p).all() for p in model.parameters())  # NNI's are NaN here
    elif case == "movement":
        config = CONV
        model, masks = _run(ours.MovementPruner, base, config, training_epochs=2, warm_up_step=0,
                            cool_down_beginning_step=4)
    else:
        config = CONV
        model = copy.deepcopy(base)
        cls = {"level": pc_pruning.LevelPruner, "l1": pc_pruning.L1NormPruner, "l2": pc_pruning.L2NormPruner,
               "fpgm": pc_pruning.FPGMPruner}[case]
        kwargs = {} if case == "level" else {"mode": "dependency_aware", "dummy_input": dummy}  # as NNI's test
        pruner = cls(model, copy.deepcopy(config), **kwargs)
        _, masks = pruner.compress()
        pruner._unwrap_model()
    assert 0.78 < _band(model, masks, config) < 0.82


# --- dependency-aware masks on residual, grouped and depthwise models, against NNI's L1NormPruner


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.a, self.b = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.c, self.d = nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 1)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.stem(x))
        y = F.relu(y + self.b(F.relu(self.a(y))))
        y = self.c(y) + self.d(y)
        return self.head(y.mean((2, 3)))


class GroupedDepthwise(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(4, 12, 1)
        self.g = nn.Conv2d(12, 12, 3, padding=1, groups=4)
        self.dw = nn.Conv2d(12, 12, 3, padding=1, groups=12)
        self.pw = nn.Conv2d(12, 8, 1)
        self.skip = nn.Conv2d(4, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pw(F.relu(self.dw(F.relu(self.g(self.c1(x)))))) + self.skip(x)


@pytest.mark.parametrize("model_cls, shape, sparsity", [
    (Residual, (1, 3, 8, 8), 0.5), (Residual, (1, 3, 8, 8), 0.3),
    (GroupedDepthwise, (1, 4, 6, 6), 0.5), (GroupedDepthwise, (1, 4, 6, 6), 0.7),
])
def test_dependency_aware_masks_equal_nni(model_cls: type, shape: tuple, sparsity: float) -> None:
    torch.manual_seed(7)
    model = model_cls()
    config = [{"op_types": ["Conv2d"], "sparsity": sparsity}]
    dummy = torch.rand(shape)
    nni_pruner = nni_pruning.L1NormPruner(copy.deepcopy(model), copy.deepcopy(config), mode="dependency_aware",
                                          dummy_input=dummy)
    _, expected = nni_pruner.compress()
    pruner = pc_pruning.L1NormPruner(copy.deepcopy(model), copy.deepcopy(config), mode="dependency_aware",
                                     dummy_input=dummy)
    _, got = pruner.compress()
    _assert_same(expected, got)

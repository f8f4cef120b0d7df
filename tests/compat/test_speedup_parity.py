"""ModelSpeedup against NNI 2.10.1's (jit-traced oracle) on graphs NNI handles under torch 2.13.

Same masks (NNI's L1NormPruner) into both; the compact models must have the same shapes and, with
zero BatchNorm biases and running means (NNI drops what pruned channels still emit), the same
outputs. Where NNI's speedup fails, the test is skipped with NNI's error.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

nni = pytest.importorskip("nni", reason="parity tests need nni==2.10.1 as the oracle")
nni_speedup = pytest.importorskip("nni.compression.pytorch.speedup")
nni_pruning = pytest.importorskip("nni.compression.pytorch.pruning")

import purecompress as pc  # noqa: E402
from purecompress.compat.speedup import ModelSpeedup  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # NNI is kept quiet by tests/compat/conftest.py


def vgg() -> nn.Module:
    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]
    return nn.Sequential(*block(3, 8), *block(8, 8), nn.MaxPool2d(2), *block(8, 16), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 10))


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(12, 24), nn.ReLU(), nn.Linear(24, 16), nn.ReLU(), nn.Linear(16, 4))


class Functional(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(8 * 4 * 4, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        return self.fc(torch.flatten(F.relu(self.conv2(x)), 1))


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(y + self.bn2(self.conv2(y)))
        return self.fc(F.adaptive_avg_pool2d(y, 1).flatten(1))


class DepthwiseCat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.expand, self.bn = nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)  # a bias would be a constant NNI drops
        self.side = nn.Conv2d(3, 4, 1)
        self.project = nn.Conv2d(12, 6, 1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([F.relu6(self.dw(F.relu6(self.bn(self.expand(x))))), self.side(x)], 1)
        return self.fc(self.project(y).mean((2, 3)))


def conv1d() -> nn.Module:
    return nn.Sequential(nn.Conv1d(4, 8, 3), nn.ReLU(), nn.Conv1d(8, 8, 3), nn.AdaptiveAvgPool1d(1), nn.Flatten(),
                         nn.Linear(8, 3))


CASES: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], list[str]]] = {
    "vgg": (vgg, (2, 3, 8, 8), ["Conv2d", "Linear"]),
    "mlp": (mlp, (3, 12), ["Linear"]),
    "functional": (Functional, (2, 3, 8, 8), ["Conv2d"]),
    "residual": (Residual, (2, 3, 8, 8), ["Conv2d"]),
    "depthwise_cat": (DepthwiseCat, (2, 3, 8, 8), ["Conv2d"]),
    "conv1d": (conv1d, (2, 4, 12), ["Conv1d"]),
}


def nni_masks(model: nn.Module, types: list[str], sparsity: float) -> dict:
    last = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    config = [{"sparsity": sparsity, "op_types": types}, {"exclude": True, "op_names": [last]}]
    if "Conv1d" in types:  # NNI's pruners do not take Conv1d: the same L1 masks from the core
        plan = pc.select(model, pc.from_config_list(config))
        masks = pc.prune(pc.params_of(model), plan, pc.l1_norm)
        out: dict = {}
        for key, mask in masks.items():
            module, _, target = key.rpartition(".")
            out.setdefault(module, {})[target] = mask.to_dense()
        return out
    pruner = nni_pruning.L1NormPruner(model, config)
    _, masks = pruner.compress()
    pruner._unwrap_model()
    return masks


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("sparsity", [0.25, 0.5])
def test_same_shapes_and_outputs_as_nni(name: str, sparsity: float) -> None:
    make, shape, types = CASES[name]
    torch.manual_seed(0)
    model = make().eval()
    x = torch.randn(shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        masks = nni_masks(model, types, sparsity)
        theirs = copy.deepcopy(model)
        try:
            nni_speedup.ModelSpeedup(theirs, x, copy.deepcopy(masks)).speedup_model()
        except Exception as err:  # noqa: BLE001  (NNI's jit translation fails on many graphs)
            pytest.skip(f"NNI 2.10.1 ModelSpeedup fails here under torch {torch.__version__}: "
                        f"{type(err).__name__}: {err}")
    ours = copy.deepcopy(model)
    ModelSpeedup(ours, x, masks).speedup_model()
    core = {f"{m}.{t}": pc.Mask.from_dense(v) for m, ts in masks.items() for t, v in ts.items() if v is not None}
    with torch.no_grad():  # and both equal the masked model
        masked = torch.func.functional_call(model, pc.apply_masks(pc.params_of(model), core), (x,))
        torch.testing.assert_close(ours(x), masked, rtol=1e-5, atol=1e-6)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}
    theirs.eval(), ours.eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-6)

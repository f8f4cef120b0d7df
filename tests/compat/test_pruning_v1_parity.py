"""NNI 1.x pruner names (``nni.algorithms.compression.pytorch.pruning``) on purecompress, against
NNI 2.10.1's own 1.x pruners: the same masks, the same files, the 1.x call pattern."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

nni = pytest.importorskip("nni", reason="parity tests need nni==2.10.1 as the oracle")
import nni.algorithms.compression.pytorch.pruning as NV1  # noqa: E402
from schema import SchemaError  # noqa: E402

import purecompress.compat.pruning_v1 as V1  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning", "ignore::FutureWarning")


class Net(nn.Module):
    """conv -> BN -> relu (x2) -> linear, on ``[N, 1, 12, 12]``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 10, 3), nn.BatchNorm2d(10)
        self.fc = nn.Linear(10, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


def _net(seed: int = 0) -> Net:
    torch.manual_seed(seed)
    net = Net()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn_like(p))
    return net


def _trainer(model: nn.Module, optimizer: torch.optim.Optimizer, criterion, epoch: int) -> None:  # noqa: ANN001
    g = torch.Generator().manual_seed(epoch)
    for _ in range(2):
        x, y = torch.randn(4, 1, 12, 12, generator=g), torch.tensor([0, 1, 2, 0])
        optimizer.zero_grad()
        criterion(model(x), y).backward()
        optimizer.step()


def _masks(pruner: object) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
    return {w.name: (w.weight_mask.clone(), None if w.bias_mask is None else w.bias_mask.clone())
            for w in pruner.get_modules_wrapper()}  # type: ignore[attr-defined]


def _assert_same(ours: dict, theirs: dict) -> None:
    assert list(ours) == list(theirs)
    for name, (w, b) in theirs.items():
        assert torch.equal(ours[name][0], w), name
        assert (ours[name][1] is None) == (b is None)
        if b is not None:
            assert torch.equal(ours[name][1], b), f"{name} bias"


def _both(make) -> tuple[dict, dict, object, object]:  # noqa: ANN001
    n_model, c_model = _net(), _net()
    theirs, ours = make(NV1, n_model), make(V1, c_model)
    theirs.compress()
    ours.compress()
    return _masks(ours), _masks(theirs), ours, c_model


CONV = [{"sparsity": 0.5, "op_types": ["Conv2d"]}, {"sparsity": 0.3, "op_names": ["conv2"], "op_types": ["Conv2d"]}]
CASES = {
    "level": lambda ns, m: ns.LevelPruner(m, [{"sparsity": 0.6, "op_types": ["default"]}]),
    "l1": lambda ns, m: ns.L1FilterPruner(m, copy.deepcopy(CONV)),
    "l2": lambda ns, m: ns.L2FilterPruner(m, copy.deepcopy(CONV)),
    "fpgm": lambda ns, m: ns.FPGMPruner(m, copy.deepcopy(CONV)),
    "slim": lambda ns, m: ns.SlimPruner(m, [{"sparsity": 0.6, "op_types": ["BatchNorm2d"]}],
                                        torch.optim.SGD(m.parameters(), lr=0.01), _trainer, nn.CrossEntropyLoss(),
                                        sparsifying_training_epochs=2),
    "taylor": lambda ns, m: ns.TaylorFOWeightFilterPruner(m, copy.deepcopy(CONV),
                                                          torch.optim.SGD(m.parameters(), lr=0.01), _trainer,
                                                          nn.CrossEntropyLoss(), sparsifying_training_batches=2),
    "taylor_global": lambda ns, m: ns.TaylorFOWeightFilterPruner(m, [{"sparsity": 0.4, "op_types": ["Conv2d"]}],
                                                                 torch.optim.SGD(m.parameters(), lr=0.01), _trainer,
                                                                 nn.CrossEntropyLoss(), global_sort=True),
    "apoz": lambda ns, m: ns.ActivationAPoZRankFilterPruner(m, copy.deepcopy(CONV),
                                                            torch.optim.SGD(m.parameters(), lr=0.01), _trainer,
                                                            nn.CrossEntropyLoss()),
    "mean": lambda ns, m: ns.ActivationMeanRankFilterPruner(m, copy.deepcopy(CONV),
                                                            torch.optim.SGD(m.parameters(), lr=0.01), _trainer,
                                                            nn.CrossEntropyLoss(), activation="relu6"),
    "agp_level": lambda ns, m: ns.AGPPruner(m, [{"sparsity": 0.8, "op_types": ["default"]}],
                                            torch.optim.SGD(m.parameters(), lr=0.01), _trainer, nn.CrossEntropyLoss(),
                                            num_iterations=3, epochs_per_iteration=1),
    "agp_l1": lambda ns, m: ns.AGPPruner(m, [{"sparsity": 0.8, "op_types": ["Conv2d"]}],
                                         torch.optim.SGD(m.parameters(), lr=0.01), _trainer, nn.CrossEntropyLoss(),
                                         num_iterations=4, epochs_per_iteration=2, pruning_algorithm="l1"),
}


@pytest.mark.parametrize("name", CASES)
def test_v1_pruners_give_nni_1x_masks(name: str) -> None:
    ours, theirs, pruner, model = _both(CASES[name])
    _assert_same(ours, theirs)
    assert any(not bool(w.all()) for w, _ in ours.values())  # something was pruned
    if name.startswith("agp"):
        assert pruner.compute_target_sparsity(pruner.config_list[0]) == 0.8  # type: ignore[attr-defined]
    first = pruner.get_modules_wrapper()[0]  # type: ignore[attr-defined]
    assert isinstance(first.module.weight, nn.Parameter)  # 1.x layout: the module keeps its Parameter


def test_calc_mask_follows_the_wrapper_config_and_if_calculated() -> None:
    """NNI's own FPGM vectors (v1/test_compressor_torch.py), through calc_mask as 1.x scripts call it."""
    w = torch.stack([torch.ones(8, 3, 3) * (i + 1) for i in range(10)])
    model = _net()
    config = [{"sparsity": 0.6, "op_types": ["Conv2d"]}, {"sparsity": 0.2, "op_types": ["Conv2d"]}]
    pruner = V1.FPGMPruner(model, config)
    model.conv2.module.weight.data = w.clone()
    assert pruner.calc_mask(model.conv2)["weight_mask"].sum((1, 2, 3)).tolist() == [72.0] * 4 + [0.0] * 2 + [72.0] * 4
    assert pruner.calc_mask(model.conv2) is None  # calculated already
    model.conv2.if_calculated, model.conv2.config = False, config[0]
    assert pruner.calc_mask(model.conv2)["weight_mask"].sum((1, 2, 3)).tolist() == [72.0] * 2 + [0.0] * 6 + [72.0] * 2


def test_export_model_writes_nni_1x_files(tmp_path: Path) -> None:
    n_model, c_model = _net(), _net()
    theirs, ours = NV1.L1FilterPruner(n_model, copy.deepcopy(CONV)), V1.L1FilterPruner(c_model, copy.deepcopy(CONV))
    theirs.compress()
    ours.compress()
    theirs.export_model(str(tmp_path / "n.pth"), str(tmp_path / "n_mask.pth"))
    ours.export_model(str(tmp_path / "c.pth"), str(tmp_path / "c_mask.pth"), str(tmp_path / "c.onnx"),
                      input_shape=(1, 1, 12, 12))
    n_state, c_state = torch.load(tmp_path / "n.pth"), torch.load(tmp_path / "c.pth")
    assert list(c_state) == list(n_state) and all(torch.equal(c_state[k], n_state[k]) for k in n_state)
    n_masks, c_masks = torch.load(tmp_path / "n_mask.pth"), torch.load(tmp_path / "c_mask.pth")
    assert list(c_masks) == list(n_masks)
    for name, targets in n_masks.items():
        assert all(torch.equal(c_masks[name][t], m) for t, m in targets.items())
    assert (tmp_path / "c.onnx").stat().st_size > 0
    assert isinstance(c_model.conv1, V1.PrunerModuleWrapper)  # rewrapped after the export


def test_dependency_aware_filters_share_channels() -> None:
    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.a(x)
            return self.c(y + self.b(y))

    torch.manual_seed(0)
    model = Residual()
    pruner = V1.L1FilterPruner(model, [{"sparsity": 0.5, "op_types": ["Conv2d"]}], dependency_aware=True,
                               dummy_input=torch.randn(1, 3, 6, 6))
    pruner.compress()
    a, b = model.a.weight_mask.sum((1, 2, 3)) > 0, model.b.weight_mask.sum((1, 2, 3)) > 0
    assert torch.equal(a, b) and int(a.sum()) == 4
    with pytest.raises(ValueError, match="dummy_input"):
        V1.L1FilterPruner(Residual(), [{"sparsity": 0.5, "op_types": ["Conv2d"]}], dependency_aware=True)


@pytest.mark.parametrize("config", [[{"sparsity": "0.2", "op_types": ["Conv2d"]}], [{"sparsity": 1.6}],
                                    [{"sparsity": 0.2, "op_types": "default"}], [{"sparsity": 0.6, "op_names": "abc"}],
                                    [{"sparsity": 0.0, "op_types": ["Conv2d"]}]])
def test_bad_configs_are_schema_errors_like_nni(config: list[dict]) -> None:
    with pytest.raises(SchemaError):
        NV1.L1FilterPruner(_net(), copy.deepcopy(config))
    with pytest.raises(SchemaError, match=r"config_list\[0\]"):
        V1.L1FilterPruner(_net(), copy.deepcopy(config))
    with pytest.raises(SchemaError):  # reported before the missing optimizer, as 1.x does
        V1.AGPPruner(_net(), copy.deepcopy(config) if config[0].get("sparsity") != 0.0 else [{"sparsity": 2.0}],
                     None, None, None)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", sorted(V1.NOT_PROVIDED))
def test_other_1x_names_say_what_to_use(name: str) -> None:
    with pytest.raises(NotImplementedError, match=f"NNI 1.x's {name} is not provided"):
        getattr(V1, name)(_net(), [{"sparsity": 0.5, "op_types": ["Conv2d"]}])
    expected = "no counterpart" if name in ("SensitivityPruner", "TransformerHeadPruner") else \
        f"nni.compression.pytorch.pruning.{name}"
    assert expected in V1.NOT_PROVIDED[name]


def _masker_and_pruner(ns_masker: type, ns_pruner: type) -> tuple[type, type]:
    """A script's own 1.x masker (half the input channels by L1) and pruner, on either namespace."""

    class InputChannelMasker(ns_masker):  # type: ignore[misc, valid-type]
        def calc_mask(self, sparsity, wrapper, wrapper_idx=None):  # noqa: ANN001, ANN201
            weight = wrapper.module.weight.data
            score = weight.abs().sum([d for d in range(weight.dim()) if d != 1])
            if int(score.numel() * sparsity) < 1:
                return {"weight_mask": torch.ones_like(weight)}
            threshold = torch.topk(score, int(score.numel() * sparsity), largest=False)[0].max()
            shape = [1, -1] + [1] * (weight.dim() - 2)
            return {"weight_mask": torch.gt(score, threshold).reshape(shape).expand_as(weight).type_as(weight)}

    class Pruner(ns_pruner):  # type: ignore[misc, valid-type]
        def __init__(self, model, config_list, algorithm):  # noqa: ANN001
            super().__init__(model, config_list, pruning_algorithm=algorithm)

        def validate_config(self, model, config_list):  # noqa: ANN001, ANN201
            pass

    return InputChannelMasker, Pruner


@pytest.mark.parametrize("custom", [False, True], ids=["built-in l1", "script's masker"])
def test_dependency_aware_pruner_and_weight_masker_as_nni_1x(custom: bool) -> None:
    from nni.algorithms.compression.pytorch.pruning.dependency_aware_pruner import DependencyAwarePruner
    from nni.algorithms.compression.pytorch.pruning.weight_masker import WeightMasker

    results = []
    pairs = ((WeightMasker, DependencyAwarePruner), (V1.WeightMasker, V1.DependencyAwarePruner))
    for masker_base, pruner_base in pairs:
        masker_cls, pruner_cls = _masker_and_pruner(masker_base, pruner_base)
        model = _net()
        pruner = pruner_cls(model, [{"sparsity": 0.5, "op_types": ["Conv2d"]}], "l1")
        if custom:
            pruner.masker = masker_cls(model, pruner)
        pruner.compress()
        results.append(_masks(pruner))
    _assert_same(results[1], results[0])


def test_dependency_aware_pruner_refuses_what_it_cannot_do() -> None:
    with pytest.raises(ValueError, match="pruning_algorithm must be one of"):
        V1.DependencyAwarePruner(_net(), [{"sparsity": 0.5, "op_types": ["Conv2d"]}], pruning_algorithm="netadapt")
    with pytest.raises(NotImplementedError, match="override it"):
        V1.WeightMasker(_net(), None).calc_mask(0.5, None)  # type: ignore[arg-type]

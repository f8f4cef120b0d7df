"""``nni.compression.pytorch.utils`` on purecompress: shape_dependency, mask_conflict,
apply_compression_results and get_total_num_weights, against NNI 2.10.1 (jit-traced oracle)."""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

nni = pytest.importorskip("nni", reason="parity tests need nni==2.10.1 as the oracle")
from nni.compression.pytorch.utils import mask_conflict as n_mask_conflict  # noqa: E402
from nni.compression.pytorch.utils import shape_dependency as NS  # noqa: E402
from nni.compression.pytorch.utils.apply_compression import apply_compression_results as n_apply  # noqa: E402
from nni.compression.pytorch.utils.num_param_counter import get_total_num_weights as n_total  # noqa: E402

import purecompress.compat as C  # noqa: E402
from tests.compat.test_dependency_parity import MODELS, X  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")


def _nni(cls_name: str, model: nn.Module, x: torch.Tensor, **kwargs: object) -> object:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return getattr(NS, cls_name)(model, x, **kwargs)


class Fork(nn.Module):
    """One tensor read by two convs (directly and through a relu) and by a linear after a pool."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1), nn.Conv2d(8, 4, 3, padding=1)
        self.c, self.fc = nn.Conv2d(4, 6, 1), nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x)
        z = self.a(y) + self.b(F.relu(y))
        return self.c(z).mean((2, 3)).sum() + self.fc(y.mean((2, 3))).sum()


class Attention(nn.Module):
    """Two self-attention blocks written as four Linear layers and two matmuls each."""

    def __init__(self, d: int = 8) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(nn.ModuleDict({n: nn.Linear(d, d) for n in ("q", "k", "v", "o")})
                                    for _ in range(2))
        self.norm = nn.LayerNorm(d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            scores = torch.matmul(block["q"](x), block["k"](x).transpose(-1, -2)).softmax(-1)
            x = self.norm(x + block["o"](torch.matmul(scores, block["v"](x))))
        return x


@pytest.mark.parametrize("name", MODELS)
def test_channel_dependency_attributes_and_export_match_nni(name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = MODELS[name]().eval()
    ours, theirs = C.ChannelDependency(model, X), _nni("ChannelDependency", model, X)
    assert {frozenset(s) for s in ours.dependency_sets} == {frozenset(s) for s in theirs.dependency_sets}
    assert {k: frozenset(v) for k, v in ours.dependency.items()} == \
        {k: frozenset(v) for k, v in theirs.dependency.items()}
    ours.export(tmp_path / "ours.csv")
    theirs.export(tmp_path / "theirs.csv")
    rows = [list(csv.reader(open(tmp_path / f))) for f in ("ours.csv", "theirs.csv")]
    assert rows[0][0] == rows[1][0] == ["Dependency Set", "Layers"]
    assert {frozenset(r[1:]) for r in rows[0][1:]} == {frozenset(r[1:]) for r in rows[1][1:]}


def test_channel_dependency_on_batchnorms_and_bad_arguments() -> None:
    torch.manual_seed(0)
    model = MODELS["residual"]().eval()
    sets = C.ChannelDependency(model, X, prune_type="Batchnorm").dependency_sets
    bns = {n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    assert set().union(*sets) == bns and any(len(s) > 1 for s in sets)
    with pytest.raises(ValueError, match="prune_type"):
        C.ChannelDependency(model, X, prune_type="Channel")
    with pytest.raises(ValueError, match="traced_model"):
        C.ChannelDependency(model, X, traced_model=object())
    with pytest.raises(ValueError, match="dummy_input"):
        C.GroupDependency(model, None)


@pytest.mark.parametrize("name", [*MODELS, "fork"])
def test_input_channel_dependency_matches_nni(name: str) -> None:
    torch.manual_seed(0)
    model = (Fork() if name == "fork" else MODELS[name]()).eval()
    ours, theirs = C.InputChannelDependency(model, X), _nni("InputChannelDependency", model, X)
    assert {frozenset(s) for s in ours.dependency_sets} == {frozenset(s) for s in theirs.dependency_sets}
    assert name != "fork" or {"a", "b", "fc"} in ours.dependency_sets


@pytest.mark.parametrize("name", MODELS)
def test_group_dependency_attributes_match_nni(name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = MODELS[name]().eval()
    ours, theirs = C.GroupDependency(model, X), _nni("GroupDependency", model, X)
    assert ours.dependency == {k: int(v) for k, v in theirs.dependency.items()} == ours.dependency_sets
    assert ours.min_groups == {k: int(v) for k, v in theirs.min_groups.items()}
    ours.export(tmp_path / "ours.csv")
    theirs.export(tmp_path / "theirs.csv")
    assert (tmp_path / "ours.csv").read_text().splitlines() == (tmp_path / "theirs.csv").read_text().splitlines()


def test_attention_weight_dependency_matches_nni() -> None:
    torch.manual_seed(0)
    model, x = Attention().eval(), torch.randn(2, 5, 8)
    ours, theirs = C.AttentionWeightDependency(model, x), _nni("AttentionWeightDependency", model, x)
    assert len(ours.dependency_sets) == len(theirs.dependency_sets) == 2
    assert [(frozenset(s[:3]), s[3]) for s in ours.dependency_sets] == \
        [(frozenset(s[:3]), s[3]) for s in theirs.dependency_sets]


def test_attention_weight_dependency_export_is_nnis_csv(tmp_path: Path) -> None:
    import csv

    model, x = Attention().eval(), torch.randn(2, 5, 8)
    ours = C.AttentionWeightDependency(model, x)
    ours.export(tmp_path / "attention.csv")
    with open(tmp_path / "attention.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["Attention layer matmul op", "Group"]
    assert rows[1:] == [[node, str(layers)] for node, layers in ours.dependency.items()] and len(rows) == 3


# fix_mask_conflict ---------------------------------------------------------------------------------

def _random_channel_masks(model: nn.Module, seed: int, dim: int = 0) -> dict[str, dict[str, torch.Tensor | None]]:
    g = torch.Generator().manual_seed(seed)
    masks: dict[str, dict[str, torch.Tensor | None]] = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            keep = torch.rand(m.weight.shape[dim], generator=g) > 0.5
            shape = [-1 if d == dim else 1 for d in range(4)]
            weight = torch.ones_like(m.weight) * keep.view(shape).float()
            bias = None if m.bias is None else (keep.float() if dim == 0 else torch.ones_like(m.bias))
            masks[name] = {"weight": weight, "bias": bias}
    return masks


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("seed", [0, 1])
def test_fix_mask_conflict_matches_nni(name: str, seed: int, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = MODELS[name]().eval()
    masks = _random_channel_masks(model, seed)
    theirs = n_mask_conflict.fix_mask_conflict({k: dict(v) for k, v in _clone(masks).items()}, model, X)
    path = tmp_path / "masks.pth"
    torch.save(masks, path)
    ours = C.fix_mask_conflict(str(path), model, X)
    assert sorted(ours) == sorted(theirs)
    for module, targets in theirs.items():
        assert torch.equal(ours[module]["weight"], targets["weight"]), module
        assert (ours[module]["bias"] is None) == (targets["bias"] is None)
        if targets["bias"] is not None:
            # NNI's group pass never updates biases (it tests hasattr(dict, 'bias')): a filter it
            # unprunes keeps a pruned bias. Here the bias follows its filter.
            kept = (ours[module]["weight"].flatten(1).sum(1) > 0).float()
            assert torch.equal(ours[module]["bias"], kept), module
    changed = [m for m in masks if not torch.equal(masks[m]["weight"], ours[m]["weight"])]
    assert changed, "these masks conflict: something must change"


def _clone(masks: dict) -> dict:
    return {k: {t: None if v is None else v.clone() for t, v in d.items()} for k, d in masks.items()}


def test_fix_mask_conflict_rejects_bad_input() -> None:
    model = MODELS["residual"]().eval()
    with pytest.raises(ValueError, match="non-empty dict"):
        C.fix_mask_conflict({}, model, X)
    with pytest.raises(FileNotFoundError):
        C.fix_mask_conflict("no-such-file.pth", model, X)
    with pytest.raises(ValueError, match="torch.jit"):
        C.fix_mask_conflict(_random_channel_masks(model, 0), model, X, traced=object())


# apply_compression_results, get_total_num_weights ---------------------------------------------------

def test_apply_compression_results_equals_nni(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = MODELS["residual"]()
    masks = _random_channel_masks(model, 3)
    path = tmp_path / "masks.pth"
    torch.save(masks, path)
    theirs, ours = MODELS["residual"](), MODELS["residual"]()
    ours.load_state_dict(theirs.state_dict())
    n_apply(theirs, str(path))
    C.apply_compression_results(ours, str(path))
    for (name, a), b in zip(theirs.state_dict().items(), ours.state_dict().values()):
        assert torch.equal(a, b), name
    with pytest.raises(KeyError, match="does not have"):
        torch.save({"nope": {"weight": torch.ones(1)}}, path)
        C.apply_compression_results(ours, str(path))


@pytest.mark.parametrize("op_types", [["Conv2d"], ["Linear"], ["Conv2d", "Linear"]])
def test_get_total_num_weights_equals_nni(op_types: list[str]) -> None:
    model = MODELS["depthwise"]()
    assert C.get_total_num_weights(model, op_types) == n_total(model, op_types) > 0

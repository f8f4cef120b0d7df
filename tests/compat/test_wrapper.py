"""PrunerModuleWrapper and Pruner mechanics (no NNI needed)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn
from torch.func import functional_call

import purecompress as pc
from purecompress.compat import L1NormPruner, LevelPruner, PrunerModuleWrapper
from purecompress.compat.pruning import Target
from tests.compat.models import MODELS, build


class Scaled(nn.Module):
    """A module with a parameter besides weight and bias (registered between them)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(6, 8))
        self.scale = nn.Parameter(torch.ones(6))
        self.bias = nn.Parameter(torch.randn(6))

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.linear(x, self.weight, self.bias) * self.scale


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.nobias = nn.Conv2d(8, 8, 1, bias=False)
        self.custom = Scaled()
        self.fc = nn.Linear(6, 4)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.custom(self.nobias(torch.relu(self.conv(x))).mean((2, 3))))


def masked_reference(model: nn.Module, masks: dict[str, dict[str, Tensor | None]], x: Tensor) -> Tensor:
    """The unwrapped model run with the masks applied functionally (the core's path)."""
    core = {f"{m}.{t}": pc.Mask.from_dense(v) for m, ts in masks.items() for t, v in ts.items() if v is not None}
    return functional_call(model, pc.apply_masks(pc.params_of(model), core), (x,))


def test_wrapping_moves_the_same_parameter_and_keeps_names() -> None:
    model = build("conv_bn_linear")
    names = [n for n, _ in model.named_parameters()]
    conv_weight, fc_bias = model.features[0].weight, model.fc1.bias
    pruner = L1NormPruner(model, [{"sparsity": 0.5, "op_types": ["Conv2d", "Linear"]}])
    wrapper = model.features[0]
    assert isinstance(wrapper, PrunerModuleWrapper) and wrapper.name == "features.0"
    assert wrapper.weight is conv_weight and model.fc1.bias is fc_bias
    assert not isinstance(wrapper.module.weight, nn.Parameter) and "weight" in dict(wrapper.module.named_buffers())
    assert [n for n, _ in model.named_parameters()] == names
    assert model.features[3].bias_mask is None and model.features[3].weight_mask.shape == (16, 8, 3, 3)
    assert wrapper.weight_mask.dtype == torch.float32 and bool((wrapper.weight_mask == 1).all())
    assert list(pruner.get_modules_wrapper()) == ["features.0", "features.3", "fc1", "fc2"]
    assert wrapper.config == {"op_types": ["Conv2d", "Linear"], "op_names": ["features.0"], "total_sparsity": 0.5}


def test_name_map_and_parameter_order_of_a_custom_module(tmp_path: Path) -> None:
    model = Net()
    pruner = LevelPruner(model, [{"sparsity": 0.5, "op_names": ["custom", "conv"]}])
    mapping = pruner.get_origin2wrapped_parameter_name_map()
    assert mapping["custom.scale"] == "custom.module.scale"
    assert mapping["custom.weight"] == "custom.weight" and mapping["conv.bias"] == "conv.bias"
    pruner.compress()
    assert model(torch.randn(2, 3, 5, 5)).shape == (2, 4)
    pruner.export_model(tmp_path / "m.pth", tmp_path / "k.pth")
    state = torch.load(tmp_path / "m.pth", weights_only=True)
    assert list(state) == list(Net().state_dict())  # original keys, original order
    pruner._unwrap_model()
    assert list(model.custom._parameters) == ["weight", "scale", "bias"]
    with pytest.raises(RuntimeError, match="only while the model is wrapped"):
        pruner.get_origin2wrapped_parameter_name_map()
    pruner._wrap_model()
    assert isinstance(model.custom, PrunerModuleWrapper)


@pytest.mark.parametrize("name", ["conv_bn_linear", "grouped", "embed_convt"])
@pytest.mark.parametrize("pruner_cls", [LevelPruner, L1NormPruner])
def test_forward_equals_functional_masking(name: str, pruner_cls: type) -> None:
    model = build(name)
    reference = copy.deepcopy(model).eval()
    x = MODELS[name].example()
    types = ["default"] if pruner_cls is LevelPruner else ["Linear"] if name == "embed_convt" else ["Conv2d", "Linear"]
    _, masks = pruner_cls(model, [{"sparsity": 0.5, "op_types": types}]).compress()
    model.eval()
    assert torch.allclose(model(x), masked_reference(reference, masks, x), atol=1e-6)


def test_linear_output_masking_equals_weight_masking() -> None:
    torch.manual_seed(0)
    a, b = nn.Sequential(nn.Linear(6, 5)), nn.Sequential(nn.Linear(6, 5))
    b.load_state_dict(a.state_dict())
    pa = L1NormPruner(a, [{"sparsity": 0.4, "op_types": ["Linear"]}])
    _, masks = pa.compress()
    assert a[0].mask_record("weight").keep.shape == (5, 1)  # the allocator's channel record, kept as it is
    assert pc.simplify_mask(pc.Mask.from_dense(masks["0"]["weight"])).keep.shape == (5, 1)
    pb = LevelPruner(b, [{"sparsity": 0.1, "op_types": ["Linear"]}])
    pb.load_masks({"0": {"weight": masks["0"]["weight"].clone(), "bias": masks["0"]["bias"].clone()}})
    x = torch.randn(3, 6)
    assert a[0]._factors().output is not None
    assert torch.equal(a[0].masked("weight"), a[0].weight * masks["0"]["weight"])
    ya, yb = a(x), b(x)
    assert torch.equal(ya, yb)
    ya.square().sum().backward()
    yb.square().sum().backward()
    assert torch.allclose(a[0].weight.grad, b[0].weight.grad) and torch.allclose(a[0].bias.grad, b[0].bias.grad)
    # A row mask with a dense bias must not zero the bias: the forward falls back to weight masking.
    pb.load_masks({"0": {"bias": torch.ones(5)}})
    assert b[0]._factors().output is None
    expected = nn.functional.linear(x, b[0].weight * masks["0"]["weight"], b[0].bias)
    assert torch.allclose(b(x), expected)


def test_mask_edits_are_seen_by_the_forward() -> None:
    model = nn.Sequential(nn.Linear(4, 3))
    pruner = LevelPruner(model, [{"sparsity": 0.5, "op_types": ["Linear"]}])
    x = torch.randn(2, 4)
    dense = model(x)
    with torch.no_grad():
        model[0].weight_mask[1] = 0  # in place, as NNI scripts sometimes do
    assert torch.allclose(model(x)[:, 1], torch.full((2,), model[0].bias[1].item()))
    pruner.load_masks({"0": {"weight": torch.ones(3, 4)}})
    assert torch.allclose(model(x), dense)
    model.double()
    assert model(x.double()).dtype == torch.float64


def test_optimizer_built_before_pruning_fine_tunes_the_masked_model() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    pruner = LevelPruner(model, [{"sparsity": 0.75, "op_types": ["Linear"]}])
    _, masks = pruner.compress()
    assert {id(p) for p in model.parameters()} == {id(p) for g in optimizer.param_groups for p in g["params"]}
    before = model[0].weight.detach().clone()
    x, y = torch.randn(32, 8), torch.randint(0, 2, (32,))
    for _ in range(3):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        assert bool((model[0].weight.grad[masks["0"]["weight"] == 0] == 0).all())
        optimizer.step()
    kept = masks["0"]["weight"] == 1
    assert not torch.equal(model[0].weight[kept], before[kept])
    assert torch.equal(model[0].weight[~kept], before[~kept])  # pruned entries get no gradient


def test_masks_never_unprune() -> None:
    model = build("conv_bn_linear")
    pruner = L1NormPruner(model, [{"sparsity": 0.5, "op_types": ["Conv2d", "Linear"]}])
    _, first = pruner.compress()
    for wrapper in pruner.get_modules_wrapper().values():
        wrapper.config["total_sparsity"] = 0.25
        with torch.no_grad():
            wrapper.weight.add_(100 * (1 - wrapper.weight_mask))  # pruned channels now have the largest norms
    _, second = pruner.compress()
    for name, targets in first.items():
        assert bool((second[name]["weight"] <= targets["weight"]).all())
        assert torch.equal(second[name]["weight"], targets["weight"])


def test_export_and_reload_round_trip(tmp_path: Path) -> None:
    model = build("conv_bn_linear").eval()
    x = torch.randn(2, 3, 8, 8)
    pruner = L1NormPruner(model, [{"sparsity": 0.5, "op_types": ["Conv2d", "Linear"]}])
    _, masks = pruner.compress()
    expected = model(x)
    pruner.export_model(tmp_path / "model.pth", tmp_path / "masks.pth")
    assert isinstance(model.fc1, PrunerModuleWrapper)  # re-wrapped after export
    fresh = build("conv_bn_linear", seed=1).eval()
    fresh.load_state_dict(torch.load(tmp_path / "model.pth", weights_only=True))
    assert torch.allclose(fresh(x), expected, atol=1e-6)
    saved = torch.load(tmp_path / "masks.pth", weights_only=True)
    assert saved["features.3"] == {"weight": saved["features.3"]["weight"], "bias": None}
    assert torch.equal(saved["fc1"]["weight"], masks["fc1"]["weight"])
    other = L1NormPruner(build("conv_bn_linear"), [{"sparsity": 0.1, "op_types": ["Conv2d", "Linear"]}])
    other.load_masks(saved)
    assert torch.equal(other.get_modules_wrapper()["fc1"].weight_mask, masks["fc1"]["weight"])
    assert pruner.show_pruned_weights() == {"features.0": (4, 8), "features.3": (8, 16), "fc1": (10, 20),
                                            "fc2": (5, 10)}


def test_errors_are_clear() -> None:
    model = build("conv_bn_linear")
    pruner = L1NormPruner(model, [{"sparsity": 0.5, "op_types": ["Linear"]}])
    with pytest.raises(KeyError, match="'features.0' is not wrapped"):
        pruner.load_masks({"features.0": {"weight": torch.ones(8, 3, 3, 3)}})
    with pytest.raises(ValueError, match="mask of shape"):
        pruner.load_masks({"fc1": {"weight": torch.ones(3)}})
    with pytest.raises(ValueError, match="has no weight to prune"):
        LevelPruner(build("conv_bn_linear"), [{"sparsity": 0.5, "op_names": ["features.2"]}])
    with pytest.raises(ValueError, match="needs balance_gran"):
        LevelPruner(build("conv_bn_linear"), [{"sparsity": 0.5, "op_types": ["Linear"]}], mode="balance")
    with pytest.raises(ValueError, match="mode must be"):
        L1NormPruner(build("conv_bn_linear"), [{"sparsity": 0.5, "op_types": ["Linear"]}], mode="global")
    with pytest.raises(ValueError, match="dummy_input"):
        L1NormPruner(build("conv_bn_linear"), [{"sparsity": 0.5, "op_types": ["Conv2d"]}], mode="dependency_aware")
    unbound = LevelPruner(None, None)
    with pytest.raises(RuntimeError, match="No model is bound"):
        unbound.compress()
    unbound.reset(build("grouped"), [{"sparsity": 0.5, "op_types": ["Linear"]}])
    assert list(unbound.compress()[1]) == ["head"]
    with pytest.raises(TypeError, match="torch.nn.Module"):
        unbound.reset("model", [{"sparsity": 0.5, "op_types": ["Linear"]}])  # type: ignore[arg-type]


def test_dependency_aware_mode_shares_masks() -> None:
    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)

        def forward(self, x: Tensor) -> Tensor:
            y = self.a(x)
            return y + self.b(y)

    _, masks = L1NormPruner(Residual(), [{"sparsity": 0.5, "op_types": ["Conv2d"]}], mode="dependency_aware",
                            dummy_input=torch.randn(1, 3, 8, 8)).compress()
    assert torch.equal(masks["a"]["weight"][:, 0, 0, 0], masks["b"]["weight"][:, 0, 0, 0])


def test_core_masks_reach_the_wrapper_as_records_and_buffers_are_derived_from_them() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 6, 1))
    pruner = L1NormPruner(model, [{"sparsity": 0.5, "op_types": ["Conv2d"]}])
    params = {f"{n}.weight": w.weight.detach() for n, w in pruner.get_modules_wrapper().items()}
    targets = pruner.targets()
    masks = pruner.sparsity_allocator.allocate(
        {n.rpartition(".")[0]: {"weight": m.score.reshape(-1)} for n, m in pc.l1_norm(params, list(params),
                                                                                    block=pc.Block.channel()).items()},
        targets)
    pruner.load_records(masks)
    wrapper = model[0]
    assert wrapper.mask_record("weight") is masks["0.weight"]  # the allocator's record, no dense round trip
    assert torch.equal(wrapper.weight_mask, masks["0.weight"].to_dense())
    assert torch.equal(wrapper.bias_mask, masks["0.bias"].to_dense())
    with torch.no_grad():
        wrapper.weight_mask[0, 0, 0, 0] = 0  # a script's in-place edit: read back from the buffer
    assert wrapper.mask_record("weight") is not masks["0.weight"]
    assert wrapper.mask_record("weight").keep.shape == (4, 3, 3, 3)


def test_allocators_receive_their_sparsity_as_an_argument() -> None:
    model = nn.Sequential(nn.Linear(4, 6))
    pruner = L1NormPruner(model, [{"sparsity": 0.5, "op_types": ["Linear"]}])
    metric = {"0": {"weight": torch.arange(6.0)}}
    masks = pruner.sparsity_allocator.allocate(metric, {"0.weight": Target((6, 4), 1 / 3)})
    assert masks["0.weight"].keep.flatten().tolist() == [False, False, True, True, True, True]
    assert pruner.get_modules_wrapper()["0"].config["total_sparsity"] == 0.5  # read by NNI's generate_sparsity only
    assert pruner.sparsity_allocator.generate_sparsity(metric)["0"]["weight"].sum() == 12


def test_show_pruned_weights_counts_every_slice_of_a_layer_without_masks() -> None:
    """Before compress() no layer has a mask record: every filter is kept, as NNI reports it."""
    pruner = L1NormPruner(build("conv_bn_linear"), [{"sparsity": 0.5, "op_types": ["Conv2d", "Linear"]}])
    shapes = {name: w.weight_mask.shape for name, w in pruner.get_modules_wrapper().items()}
    assert pruner.show_pruned_weights() == {name: (s[0], s[0]) for name, s in shapes.items()}
    assert pruner.show_pruned_weights(dim=1) == {name: (s[1], s[1]) for name, s in shapes.items()}

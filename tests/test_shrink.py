"""Shrinking pruned models: shapes, exactness against the masked model, state_dict round trip."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

import purecompress as pc
from purecompress.graph import channel_dependency, group_dependency, shrink
from purecompress.pruning import allocate_dependency_aware

pytestmark = pytest.mark.usefixtures("one_thread")


def conv_bn(cin: int, cout: int, k: int = 3, **kw: object) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False, **kw), nn.BatchNorm2d(cout), nn.ReLU())


class VGG(nn.Module):
    def __init__(self, width: int = 16) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(conv_bn(3, w), conv_bn(w, w), nn.MaxPool2d(2), conv_bn(w, 2 * w),
                                      conv_bn(2 * w, 2 * w), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(2 * w * 4 * 4, 32), nn.ReLU(), nn.Dropout(0.1),
                                        nn.Linear(32, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class Basic(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.down is None else self.down(x)))


class Bottleneck(nn.Module):
    def __init__(self, cin: int, mid: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid)
        self.conv2, self.bn2 = nn.Conv2d(mid, mid, 3, padding=1, bias=False), nn.BatchNorm2d(mid)
        self.conv3, self.bn3 = nn.Conv2d(mid, cin, 1, bias=False), nn.BatchNorm2d(cin)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += x
        return F.relu(out)


class ResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 16)
        self.layer1 = nn.Sequential(Basic(16, 16), Basic(16, 32, 2))
        self.layer2 = Bottleneck(32, 8)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class InvertedResidual(nn.Module):
    def __init__(self, c: int, expand: int = 4) -> None:
        super().__init__()
        h = c * expand
        self.block = nn.Sequential(
            nn.Conv2d(c, h, 1, bias=False), nn.BatchNorm2d(h), nn.ReLU6(),
            nn.Conv2d(h, h, 3, padding=1, groups=h, bias=False), nn.BatchNorm2d(h), nn.ReLU6(),
            nn.Conv2d(h, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class MobileNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 8)
        self.blocks = nn.Sequential(InvertedResidual(8), InvertedResidual(8))
        self.head = nn.Sequential(nn.Conv2d(8, 32, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(32, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


class CatSplitSE(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = conv_bn(3, 8), conv_bn(3, 8)
        self.mix = nn.Conv2d(16, 16, 1)
        self.fc1, self.fc2 = nn.Linear(16, 4), nn.Linear(4, 16)
        self.post = nn.Conv2d(8, 8, 3, padding=1)
        self.out = nn.Linear(24, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.mix(torch.cat([self.a(x), self.b(x)], dim=1)))
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(y.mean((2, 3))))))
        y = y * s.view(s.size(0), -1, 1, 1)
        left, right = torch.chunk(y, 2, dim=1)
        z = torch.cat([self.post(left), right + left], 1).amax((2, 3))
        return self.out(torch.cat([z, left.mean((2, 3))], 1))


class Conv1dNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv1d(4, 16, 3), nn.BatchNorm1d(16), nn.ReLU(), nn.Conv1d(16, 16, 1),
                                 nn.ReLU(), nn.AdaptiveMaxPool1d(1), nn.Flatten(), nn.Linear(16, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Functional(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2, self.c3 = nn.Conv2d(3, 12, 3), nn.Conv2d(12, 12, 1), nn.Conv2d(12, 12, 1)
        self.fc = nn.Linear(12 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.max_pool2d(F.leaky_relu(self.c1(F.pad(x, (1, 1, 1, 1)))), 2)
        y = F.interpolate(y, scale_factor=0.5, mode="nearest")
        y = torch.relu(self.c2(y)) + F.dropout(self.c3(y), 0.2, self.training)
        return self.fc(torch.flatten(y.permute(0, 2, 3, 1).permute(0, 3, 1, 2), 1))


MLP = lambda: nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 5))  # noqa: E731

CASES = {
    "vgg": (VGG, (2, 3, 16, 16)),
    "resnet": (ResNet, (2, 3, 16, 16)),
    "mobilenet": (MobileNet, (2, 3, 12, 12)),
    "cat_split_se": (CatSplitSE, (2, 3, 10, 10)),
    "conv1d": (Conv1dNet, (2, 4, 20)),
    "mlp": (MLP, (3, 20)),
    "functional": (Functional, (2, 3, 16, 16)),
}


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-zero BN biases, running means and variances, as after training."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.bias.data = torch.randn(m.num_features, generator=g) * 0.5
            m.running_mean.data = torch.randn(m.num_features, generator=g) * 0.3
            m.running_var.data = torch.rand(m.num_features, generator=g) + 0.5
    return model.eval()


def l1_masks(model: nn.Module, x: torch.Tensor, sparsity: float, dependency: bool = False) -> pc.Masks:
    types = sorted({type(m).__name__ for m in model.modules()} & {"Conv1d", "Conv2d", "Linear"})
    last = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    plan = pc.select(model, pc.from_config_list([{"sparsity": sparsity, "op_types": types},
                                                 {"exclude": True, "op_names": [last]}]))
    params = pc.params_of(model)
    metrics = pc.l1_norm(params, plan)
    if not dependency:
        return pc.allocate(metrics, plan)
    masks = allocate_dependency_aware(metrics, sparsity, channel_sets=channel_dependency(model, x),
                                      groups=group_dependency(model, x))
    return pc.bias_masks(masks, {k: v for e in plan for k, v in e.params.items()})


def masked_output(model: nn.Module, masks: pc.Masks, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return functional_call(model, pc.apply_masks(pc.params_of(model), masks), (x,))


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("sparsity,dependency", [(0.25, False), (0.5, True), (0.75, False)])
def test_compact_matches_propagated_masks(name: str, sparsity: float, dependency: bool) -> None:
    make, shape = CASES[name]
    torch.manual_seed(0)
    model = randomize(make())
    x = torch.randn(shape)
    masks = l1_masks(model, x, sparsity, dependency)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    compact, report = shrink(model, masks, x)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # never mutated
    assert report.params_after < report.params_before
    with torch.no_grad():
        y = compact(x)
    if not report.inexact:  # every fold exact: the compact model is the user's masked model
        assert rel(y, masked_output(model, masks, x)) <= 1e-5
    assert report.output_error == pytest.approx(rel(y, masked_output(model, masks, x)), abs=1e-5)
    # the propagated masks and params: the compact model's function; shrunk again, the same model
    with torch.no_grad():
        assert rel(functional_call(model, pc.apply_masks(report.params, report.masks), (x,)), y) <= 1e-5
    tuned, exact = shrink(model, report.masks, x, params=report.params)
    shapes = {k: v.shape for k, v in compact.state_dict().items()}
    assert all(shapes.get(k, v.shape) == v.shape for k, v in tuned.state_dict().items())
    assert not exact.inexact
    with torch.no_grad():
        assert rel(tuned(x), y) <= 1e-5
    again, _ = shrink(model, masks, x)
    again.load_state_dict(compact.state_dict(), strict=True)
    if name in ("vgg", "conv1d", "mlp"):  # plain chains: every masked layer keeps exactly its kept rows
        for key, mask in masks.items():
            if key.endswith(".weight"):
                module = compact.get_submodule(key[: -len(".weight")])
                assert module.weight.shape[0] == int(mask.keep.sum())


@pytest.mark.parametrize("name", sorted(CASES))
def test_exact_option_equals_the_users_masked_model(name: str) -> None:
    make, shape = CASES[name]
    torch.manual_seed(1)
    model = randomize(make(), seed=1)
    x = torch.randn(shape)
    masks = l1_masks(model, x, 0.5)
    compact, report = shrink(model, masks, x, exact=True)
    assert not report.inexact and report.params_after < report.params_before
    with torch.no_grad():
        assert rel(compact(x), masked_output(model, masks, x)) <= 1e-5
        other = torch.randn(shape)  # another input: the same function, not only on the example
        assert rel(compact(other), masked_output(model, masks, other)) <= 1e-5


class ScaledConv(nn.Conv2d):
    """A Conv2d subclass with its own constructor and an extra attribute used in forward."""

    def __init__(self, cin: int, cout: int, scale: float) -> None:
        super().__init__(cin, cout, 3, padding=1)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * self.scale


class NormAct(nn.BatchNorm2d):
    """A BatchNorm2d subclass applying an activation it holds (timm's BatchNormAct2d pattern)."""

    def __init__(self, c: int) -> None:
        super().__init__(c)
        self.act = nn.Hardswish()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0,
                                     self.eps))


def test_subclasses_keep_their_class_and_attributes() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(ScaledConv(3, 8, 0.5), NormAct(8), nn.Conv2d(8, 4, 1)).eval()
    with torch.no_grad():
        model[1].bias.uniform_(0.1, 0.5)
    x = torch.randn(2, 3, 6, 6)
    keep = torch.tensor([True, False] * 4).reshape(8, 1, 1, 1)
    masks = {"0.weight": pc.Mask(keep, (8, 3, 3, 3))}
    compact, report = shrink(model, masks, x)
    assert type(compact[0]) is ScaledConv and compact[0].scale == 0.5 and compact[0].out_channels == 4
    assert type(compact[1]) is NormAct and type(compact[1].act) is nn.Hardswish and compact[1].num_features == 4
    assert compact[1].running_mean.shape == (4,) and compact[2].in_channels == 4
    assert report.dense == {} and report.replaced == ("0", "1", "2")
    masked = functional_call(model, pc.apply_masks(pc.params_of(model), masks), (x,))
    assert torch.allclose(compact(x), masked, atol=1e-6)  # the constant hardswish(beta) folds into "2"
    assert model[0].out_channels == 8 and model[0].weight.shape[0] == 8  # the model is untouched


class LinearNorm(nn.Module):
    """LeViT's Linear + BatchNorm1d over the flattened tokens, reshaped back with ``reshape_as``."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.bn, self.b = nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        return self.b(self.bn(y.flatten(0, 1)).reshape_as(y))


def test_reshape_as_passes_the_channels() -> None:
    torch.manual_seed(0)
    model, x = LinearNorm().eval(), torch.randn(2, 5, 6)
    keep = torch.tensor([True, False] * 4).reshape(8, 1)
    masks = {"a.weight": pc.Mask(keep, (8, 6))}
    compact, report = shrink(model, masks, x)
    assert report.dense == {} and compact.b.in_features == 4 and compact.bn.num_features == 4
    masked = functional_call(model, pc.apply_masks(pc.params_of(model), masks), (x,))
    assert torch.allclose(compact(x), masked, atol=1e-6)

"""Graph capture and channel/group dependency analysis (purecompress.graph)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from purecompress.graph import (
    GraphCaptureError,
    capture,
    capture_info,
    channel_dependency,
    group_dependency,
    is_captured,
)
from tests.models_blocks import Basic, Bottleneck, conv_bn


class ResNetish(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 8)
        self.layer1 = nn.Sequential(Basic(8, 8), Basic(8, 8))
        self.layer2 = nn.Sequential(Basic(8, 16, 2), Bottleneck(16, 4, 16), Bottleneck(16, 4, 24))
        self.fc = nn.Linear(24, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer2(self.layer1(F.relu(self.stem(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class Cat(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim, self.a, self.b, self.c = (
            dim,
            nn.Conv2d(3, 4, 1),
            nn.Conv2d(3, 4, 1),
            nn.Conv2d(8, 4, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([self.a(x), F.relu(self.b(x))], dim=self.dim)
        return self.c(y if self.dim in (1, -3) else y[:, :, :4].repeat(1, 2, 1, 1))


class SqueezeExcite(nn.Module):
    def __init__(self, linear: bool) -> None:
        super().__init__()
        self.linear = linear
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        make = nn.Linear if linear else (lambda i, o: nn.Conv2d(i, o, 1))
        self.fc1, self.fc2 = make(8, 2), make(2, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        s = y.mean((2, 3)) if self.linear else F.adaptive_avg_pool2d(y, 1)
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(s))))
        return y * (s.view(s.size(0), -1, 1, 1).expand_as(y) if self.linear else s)


class SpatialAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.gate = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y * torch.sigmoid(self.gate(y))  # [N, 1, H, W] broadcast along channels


class Functional(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c, self.d = (nn.Conv2d(3, 4, 1) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.add(F.relu(self.a(x)), self.b(x))
        z = self.c(x)
        z.add_(F.max_pool2d(y, 3, 1, 1))
        return torch.sub(z, 2.0) * 0.5 + F.interpolate(self.d(x)[:, :, ::2, ::2], scale_factor=2.0)


class Chain(nn.Module):
    """a + b, then c + d, then the two sums: one set of four; e stays alone."""

    def __init__(self) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(3, 4, 1) for _ in range(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b, c, d, e = (conv(x) for conv in self.convs)
        ab, cd = a + b, c - d
        ab += cd
        return torch.cat([ab, e], 1)


class Grouped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 1)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1, groups=4)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.pw = nn.Conv2d(16, 8, 1)
        self.conv3 = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.norm = nn.GroupNorm(8, 8)
        self.fc = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pw(self.dw(F.relu(self.conv2(self.conv1(x)))))
        return self.fc(self.norm(self.conv3(x)).flatten(1))


class DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.block = Gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(self.conv(x)) + self.conv(x)


class Gate(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # data-dependent control flow: fx cannot trace it
            return x
        return -x


X = torch.randn(2, 3, 8, 8)


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def sets(groups: list[tuple[str, ...]]) -> set[frozenset[str]]:
    return {frozenset(g) for g in groups}


def test_resnet_basic_and_bottleneck_blocks() -> None:
    deps = channel_dependency(ResNetish(), X)
    assert deps == [
        ("stem.0", "layer1.0.conv2.0", "layer1.1.conv2.0"),
        ("layer1.0.conv1.0",),
        ("layer1.1.conv1.0",),
        ("layer2.0.conv1.0",),
        ("layer2.0.conv2.0", "layer2.0.down.0", "layer2.1.body.4.0"),
        ("layer2.1.body.0.0",),
        ("layer2.1.body.2.0",),
        ("layer2.2.down.0", "layer2.2.body.4.0"),  # the bottleneck calls down first
        ("layer2.2.body.0.0",),
        ("layer2.2.body.2.0",),
        ("fc",),
    ]


def test_every_producer_appears_once_in_graph_order() -> None:
    model = ResNetish()
    gm = capture(model, X)
    order = [str(n.target) for n in gm.graph.nodes if n.op == "call_module"]
    deps = channel_dependency(gm)
    flat = [name for group in deps for name in group]
    producers = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert sorted(flat) == sorted(producers)
    for group in deps:
        assert list(group) == sorted(group, key=order.index)
    assert [g[0] for g in deps] == sorted((g[0] for g in deps), key=order.index)


@pytest.mark.parametrize(
    "dim, expected",
    [(1, [("a",), ("b",), ("c",)]), (-3, [("a",), ("b",), ("c",)]), (2, [("a", "b"), ("c",)])],
)
def test_cat_joins_only_off_the_channel_dim(dim: int, expected: list[tuple[str, ...]]) -> None:
    assert channel_dependency(Cat(dim), X) == expected


@pytest.mark.parametrize("linear", [False, True])
def test_squeeze_excite_multiply_joins_the_gate(linear: bool) -> None:
    assert channel_dependency(SqueezeExcite(linear), X) == [("conv", "fc2"), ("fc1",)]


def test_broadcast_along_channels_adds_no_dependency() -> None:
    assert channel_dependency(SpatialAttention(), X) == [("conv",), ("gate",)]


def test_shape_and_dtype_arguments_carry_no_channels() -> None:
    class Like(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1), nn.Conv2d(3, 3, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            a, b = self.a(x), self.b(x)
            return a.type_as(b) + b.mean((2, 3), keepdim=True).expand_as(a) + F.pad(self.c(x), (0, 0, 0, 0, 0, 1))

    # a meets b; the second operand of type_as / expand_as is no channel source, and padding
    # c's 3 channels to 4 stops the search
    assert channel_dependency(Like(), X) == [("a", "b"), ("c",)]


def test_functional_and_inplace_ops() -> None:
    assert channel_dependency(Functional(), X) == [("a", "b", "c", "d")]


def test_chained_adds_merge_transitively() -> None:
    assert sets(channel_dependency(Chain(), X)) == {
        frozenset({"convs.0", "convs.1", "convs.2", "convs.3"}),
        frozenset({"convs.4"}),
    }


def test_grouped_and_depthwise_convs() -> None:
    model = Grouped()
    assert group_dependency(model, X[:, :, :4, :4]) == {
        "conv1": 4,  # feeds a conv with groups=4
        "conv2": 4,
        "dw": 1,  # depthwise adds nothing, and does not constrain conv2
        "pw": 2,  # feeds conv3 (groups=2)
        "conv3": 8,  # own groups 2, feeds GroupNorm(8): lcm
        "norm": 8,
    }
    assert channel_dependency(model, X[:, :, :4, :4], couple_depthwise=False) == [
        ("conv1",), ("conv2",), ("dw",), ("pw",), ("conv3",), ("fc",)
    ]  # fmt: skip  (NNI's sets)
    assert channel_dependency(model, X[:, :, :4, :4]) == [
        ("conv1",), ("conv2", "dw"), ("pw",), ("conv3",), ("fc",)
    ]  # fmt: skip  (the default: the depthwise conv shares its producer's mask)


def test_linear_after_flatten_and_residual_groups() -> None:
    model = nn.Sequential(Basic(3, 8, 2), nn.Flatten(), nn.Linear(8 * 4 * 4, 4))
    assert channel_dependency(model, X) == [("0.conv1.0",), ("0.conv2.0", "0.down.0"), ("2",)]
    assert group_dependency(model, X) == {"0.conv1.0": 1, "0.conv2.0": 1, "0.down.0": 1}


def test_model_and_inputs_unchanged() -> None:
    model = ResNetish().train()
    model.layer1.eval()
    before, x = snapshot(model), X.clone()
    modes = [m.training for m in model.modules()]
    channel_dependency(model, X)
    group_dependency(model, X)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [m.training for m in model.modules()] == modes
    assert torch.equal(X, x)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_inplace_op_on_the_input_does_not_touch_the_caller_tensor() -> None:
    class Inplace(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x.mul_(2))

    x = X.clone()
    capture(Inplace(), x)
    assert torch.equal(x, X)


def test_capture_records_shapes_and_is_reusable() -> None:
    model = Basic(3, 8, 2)
    gm = capture(model, (X,))
    assert is_captured(gm) and not is_captured(model)
    shapes = {str(n.target): tuple(n.meta["tensor_meta"].shape) for n in gm.graph.nodes
              if n.op == "call_module"}  # fmt: skip
    assert shapes["conv1.0"] == (2, 8, 4, 4) and shapes["down.1"] == (2, 8, 4, 4)
    assert channel_dependency(gm) == channel_dependency(model, X)
    assert group_dependency(gm) == group_dependency(model, X)
    with pytest.raises(TypeError, match="example_inputs"):
        channel_dependency(model)


def test_keyword_inputs_and_defaults() -> None:
    class Masked(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1)

        def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
            return self.a(x) if y is None else self.a(x) + self.b(y)

    assert channel_dependency(Masked(), {"x": X}) == [("a",)]
    assert channel_dependency(Masked(), {"x": X, "y": X}) == [("a", "b")]


def test_untraceable_model_names_the_module_and_the_remedies() -> None:
    with pytest.raises(GraphCaptureError) as info:
        capture(DataDependent(), X, method="fx")
    message = str(info.value)
    assert info.value.module == "block"
    assert "'block'" in message and "if x.sum() > 0" in message
    assert "groups=" in message and "exclude" in message and "leaf_modules=['block']" in message
    assert "method='record'" in message
    assert isinstance(info.value, RuntimeError)
    # the remedies work: the leaf is kept whole and its channels pass through (same shape) ...
    assert channel_dependency(DataDependent(), X, leaf_modules=["block"], capture_method="fx") == [("conv",)]
    assert channel_dependency(DataDependent(), X, leaf_modules=[Gate], capture_method="fx") == [("conv",)]
    # ... and so does the default: method='auto' records the run, and says why
    gm = capture(DataDependent(), X)
    assert capture_info(gm).method == "record" and "if x.sum() > 0" in capture_info(gm).reason
    assert any("Tensor.__bool__ in module 'block'" in s for s in capture_info(gm).specialized)
    assert channel_dependency(gm) == [("conv",)]


def test_failing_shape_run_names_the_op() -> None:
    with pytest.raises(GraphCaptureError, match="running op") as info:
        capture(Basic(3, 8), torch.randn(2, 5, 8, 8))
    assert info.value.module == "conv1.0"


class MyConv(nn.Conv2d):
    """A user subclass: still one producer node, fx does not trace into it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * 2


class EncoderDecoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc = MyConv(3, 4, 3, padding=1)
        self.down = nn.Conv2d(4, 8, 2, stride=2)
        self.up = nn.ConvTranspose2d(8, 4, 2, stride=2)
        self.seq = nn.Conv1d(4, 4, 1)
        self.mix = nn.Conv1d(4, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.enc(x)
        y = (self.up(F.relu(self.down(e))) + e).flatten(2)  # [N, 4, H*W]
        return self.seq(y) - self.mix(y).softmax(-1)


def test_conv_subclasses_transposed_and_1d_convs_are_producers() -> None:
    assert channel_dependency(EncoderDecoder(), X) == [("enc", "up"), ("down",), ("seq", "mix")]

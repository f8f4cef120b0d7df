"""Dependency sets equal NNI 2.10.1's ChannelDependency / GroupDependency (jit-traced oracle)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

nni = pytest.importorskip("nni", reason="parity tests need nni==2.10.1 as the oracle")
shape_dependency = pytest.importorskip("nni.compression.pytorch.utils.shape_dependency")

from purecompress.compat.shape_dependency import ChannelDependency  # noqa: E402
from purecompress.graph import capture, channel_dependency, group_dependency  # noqa: E402
from tests.models_blocks import Basic, Bottleneck, conv_bn  # noqa: E402


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expansion, 3x3 depthwise, 1x1 projection, residual add."""

    def __init__(self, c: int, expand: int) -> None:
        super().__init__()
        hidden = c * expand
        self.expand = conv_bn(c, hidden, 1)
        self.dw = conv_bn(hidden, hidden, groups=hidden)
        self.project = conv_bn(hidden, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.project(F.relu6(self.dw(F.relu6(self.expand(x)))))


class SqueezeExcite(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc1, self.fc2 = (
            nn.Conv2d(8, 8, 3, padding=1),
            nn.Linear(8, 2),
            nn.Linear(2, 8),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(y.mean((2, 3))))))
        return x + y * s.view(s.size(0), -1, 1, 1)


def residual() -> nn.Module:
    return nn.Sequential(
        conv_bn(3, 8), nn.ReLU(), Basic(8, 8), Basic(8, 16, 2), Bottleneck(16, 4, 16),
        Bottleneck(16, 8, 32), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    )  # fmt: skip


def grouped() -> nn.Module:
    return nn.Sequential(
        conv_bn(3, 16), nn.ReLU(), Bottleneck(16, 8, 16, groups=4), Bottleneck(16, 8, 32, groups=2),
        nn.Conv2d(32, 32, 3, padding=1, groups=8), nn.GroupNorm(4, 32), nn.Conv2d(32, 16, 1),
    )  # fmt: skip


def depthwise() -> nn.Module:
    return nn.Sequential(
        conv_bn(3, 8), nn.ReLU6(), InvertedResidual(8, 4), InvertedResidual(8, 2), SqueezeExcite(),
        conv_bn(8, 8, groups=8), nn.Conv2d(8, 16, 1),
    )  # fmt: skip


MODELS: dict[str, Callable[[], nn.Module]] = {
    "residual": residual,
    "grouped": grouped,
    "depthwise": depthwise,
}
X = torch.randn(2, 3, 16, 16)


def nni_oracle(cls_name: str, model: nn.Module, x: torch.Tensor) -> Any:
    """Run NNI's analysis; a failure of NNI itself on this torch becomes a skip with its error."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return getattr(shape_dependency, cls_name)(model, x).dependency_sets
    except Exception as err:  # NNI's own breakage on torch 2.13, recorded, not hidden
        pytest.skip(f"NNI {cls_name} fails on torch {torch.__version__}: {type(err).__name__}: {err}")


@pytest.mark.parametrize("name", MODELS)
def test_channel_dependency_matches_nni(name: str) -> None:
    torch.manual_seed(0)
    model = MODELS[name]().eval()
    ours = channel_dependency(model, X, couple_depthwise=False)  # NNI's rule (the core default couples)
    theirs = nni_oracle("ChannelDependency", model, X)
    assert {frozenset(s) for s in ours} == {frozenset(s) for s in theirs}
    assert any(len(s) > 1 for s in ours)  # the model really has dependencies
    compat = ChannelDependency(model, X).dependency_sets  # what NNI scripts get: NNI's sets
    assert {frozenset(s) for s in compat} == {frozenset(s) for s in theirs}


@pytest.mark.parametrize("name", MODELS)
def test_group_dependency_matches_nni(name: str) -> None:
    torch.manual_seed(0)
    model = MODELS[name]().eval()
    ours = group_dependency(capture(model, X))
    theirs = nni_oracle("GroupDependency", model, X)
    assert ours == {k: int(v) for k, v in theirs.items()}


def _hf(name: str) -> tuple[nn.Module, torch.Tensor]:
    transformers = pytest.importorskip("transformers", reason="transformers builds the HF models")
    torch.manual_seed(0)
    ids = torch.randint(0, 100, (2, 8))
    if name == "bert":
        cfg = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                      intermediate_size=64, max_position_embeddings=64)
        return transformers.BertModel(cfg).eval(), ids
    if name == "gpt2":
        cfg = transformers.GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                      bos_token_id=0, eos_token_id=0, use_cache=False)
        return transformers.GPT2LMHeadModel(cfg).eval(), ids
    cfg = transformers.ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2,
                                 num_attention_heads=4, intermediate_size=64)
    return transformers.ViTModel(cfg).eval(), torch.randn(2, 3, 16, 16)


@pytest.mark.parametrize("name", ["bert", "gpt2", "vit"])
def test_recorded_transformers_match_nni(name: str) -> None:
    """torch.fx cannot trace these; the recorded run (method='auto' falls back to it) gives NNI's sets."""
    model, x = _hf(name)
    ours = channel_dependency(model, x, couple_depthwise=False)
    theirs = nni_oracle("ChannelDependency", model, (x,))
    assert {frozenset(s) for s in ours} == {frozenset(s) for s in theirs}

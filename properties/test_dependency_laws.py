"""Laws of channel dependency analysis on generated residual networks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from purecompress.graph import channel_dependency


class Residual(nn.Module):
    """A chain of 1x1 convs; layer i may add the output of an earlier layer (same width)."""

    def __init__(self, widths: list[int], skips: list[int | None]) -> None:
        super().__init__()
        self.skips = skips
        self.convs = nn.ModuleList(nn.Conv2d(cin, cout, 1) for cin, cout in zip([3, *widths], widths))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = []
        for conv, skip in zip(self.convs, self.skips):
            y = conv(F.relu(outs[-1]) if outs else x)
            outs.append(y if skip is None else y + outs[skip])
        return outs[-1]


@st.composite
def residual_nets(draw: st.DrawFn) -> tuple[list[int], list[int | None]]:
    widths = draw(st.lists(st.sampled_from([2, 4]), min_size=1, max_size=6))
    skips = [draw(st.sampled_from([None, *(j for j in range(i) if widths[j] == w)])) for i, w in enumerate(widths)]
    return widths, skips


def components(widths: list[int], skips: list[int | None]) -> set[frozenset[str]]:
    """The connected components of 'meets at an add', computed by hand."""
    producers = [{f"convs.{i}"} for i in range(len(widths))]  # producers behind each output
    for i, skip in enumerate(skips):
        if skip is not None:
            merged = producers[i] | producers[skip]
            producers = [merged if p & merged else p for p in producers]
    return {frozenset(p) for p in producers}


@settings(max_examples=25)
@given(net=residual_nets())
def test_sets_are_the_components_of_residual_adds(net: tuple[list[int], list[int | None]]) -> None:
    deps = channel_dependency(Residual(*net), torch.zeros(1, 3, 2, 2))
    assert {frozenset(s) for s in deps} == components(*net)


@settings(max_examples=10)
@given(net=residual_nets(), size=st.integers(1, 5), batch=st.integers(1, 3))
def test_sets_do_not_depend_on_the_example_shape(
    net: tuple[list[int], list[int | None]], size: int, batch: int
) -> None:
    model = Residual(*net)
    assert channel_dependency(model, torch.zeros(batch, 3, size, size)) == channel_dependency(
        model, torch.zeros(1, 3, 2, 2)
    )

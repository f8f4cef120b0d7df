"""Dependency analysis time on a ResNet-style net: purecompress (torch.fx) vs NNI 2.10.1 (jit).

Both sides do what a dependency-aware pruner needs, from the model and a dummy input: capture the
graph once, then channel-dependency sets and group counts (NNI: one ``TorchModuleGraph`` jit trace
shared by ``ChannelDependency`` and ``GroupDependency``, as its ``DependencyAwareAllocator``
does). Median of several repeats after one warm-up, in one process, CPU; the two sides run
alternately so that load from other processes falls on both alike, on one torch thread (on a
shared machine, multi-threaded kernels stall far more than they gain at this size).

    python benchmarks/bench_dependency.py
"""

from __future__ import annotations

import statistics
import time
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from zoo_import import install_import_hook  # benchmarks/ is sys.path[0]

from purecompress.graph import capture, channel_dependency, group_dependency

install_import_hook()  # NNI -> Lightning -> torchvision on the CPU torch

REPEATS = 5


class Basic(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(y + (x if self.down is None else self.down(x)))


def resnet(blocks: tuple[int, ...] = (2, 2, 2, 2), width: int = 16) -> nn.Module:
    """ResNet-18 layout (8 basic blocks, 3 with a downsample conv), narrow channels."""
    layers: list[nn.Module] = [nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
    cin = width
    for stage, n in enumerate(blocks):
        cout = width * 2**stage
        for i in range(n):
            layers.append(Basic(cin, cout, 2 if stage and i == 0 else 1))
            cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 10)]
    return nn.Sequential(*layers).eval()


def ours(model: nn.Module, x: torch.Tensor) -> tuple[list[tuple[str, ...]], dict[str, int]]:
    graph = capture(model, x)
    return channel_dependency(graph, couple_depthwise=False), group_dependency(graph)  # NNI's sets, compared


def nni(model: nn.Module, x: torch.Tensor) -> tuple[list[set[str]], dict[str, int]]:
    from nni.common.graph_utils import TorchModuleGraph
    from nni.compression.pytorch.utils.shape_dependency import ChannelDependency, GroupDependency

    trace = TorchModuleGraph(model=model, dummy_input=x).trace
    channel = ChannelDependency(model=model, dummy_input=x, traced_model=trace).dependency_sets
    return channel, GroupDependency(model=model, dummy_input=x, traced_model=trace).dependency_sets


def median_seconds(*fns: Callable[[], object]) -> list[float]:
    """Median wall time of each function, run alternately after one warm-up call each."""
    times: list[list[float]] = [[] for _ in fns]
    for repeat in range(REPEATS + 1):
        for fn, seconds in zip(fns, times):
            start = time.perf_counter()
            fn()
            if repeat:
                seconds.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model, x = resnet(), torch.randn(1, 3, 32, 32)
    fns = {"purecompress (torch.fx)": lambda: ours(model, x)}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            channel, groups = nni(model, x)
        ref = ours(model, x)
        assert {frozenset(s) for s in channel} == {frozenset(s) for s in ref[0]}, "channel sets differ"
        assert {k: int(v) for k, v in groups.items()} == ref[1], "group counts differ"
        fns["NNI 2.10.1 (torch.jit)"] = lambda: nni(model, x)
    except ImportError:
        print("nni is not installed: purecompress only")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # NNI's jit tracer warnings
        rows = list(zip(fns, median_seconds(*fns.values())))
    convs = sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.modules())
    print(f"Dependency analysis, ResNet-18 layout (8 basic blocks, {convs} conv/linear), [1, 3, 32, 32], CPU,")
    print(f"torch {torch.__version__}, 1 thread, median of {REPEATS}\n")
    print("| implementation | time (ms) | NNI / this |")
    print("|---|---:|---:|")
    nni_s = rows[-1][1] if len(rows) > 1 else None
    for name, seconds in rows:
        ratio = f"{nni_s / seconds:.1f}x" if nni_s else "n/a"
        print(f"| {name} | {seconds * 1e3:.1f} | {ratio} |")


if __name__ == "__main__":
    main()

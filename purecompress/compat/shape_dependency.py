"""NNI 2.10's dependency analyses (``nni.compression.pytorch.utils.shape_dependency``) on torch.fx.

Each class runs the core's analysis once, at construction, on the model and ``dummy_input``
(:func:`purecompress.graph.channel_dependency`, :func:`~purecompress.graph.input_channel_dependency`,
:func:`~purecompress.graph.group_constraints`, :func:`~purecompress.graph.attention_dependency`)
and exposes NNI's attributes: ``dependency`` (NNI's dict), ``dependency_sets`` and ``export(path)``
(NNI's CSV). The graph is captured with ``torch.fx``, not ``torch.jit.trace``: ``traced_model``
(a jit graph) is not accepted. Differences from NNI: the analyses stop at ops that mix channels
(a matmul, a functional conv) where NNI's walk passes through them, and ``AttentionWeightDependency``
keys its ``dependency`` by fx node names (``'matmul_1'``) and lists only matmul nodes.
"""

from __future__ import annotations

import csv
import math
import os
from typing import Any

from torch import nn

from purecompress.compat.pruning.base import PrunerModuleWrapper
from purecompress.graph import (
    PRODUCER_TYPES,
    attention_dependency,
    channel_dependency,
    group_constraints,
    input_channel_dependency,
)

__all__ = [
    "AttentionWeightDependency",
    "ChannelDependency",
    "Dependency",
    "GroupDependency",
    "InputChannelDependency",
]


def _outer(model: nn.Module, name: str) -> str:
    """The name NNI gives a layer: a pruner's wrapper name for the module it wraps (``conv1``, not
    ``conv1.module``; capture sees through the wrappers)."""
    parent = name.removesuffix(".module")
    if parent != name and isinstance(model.get_submodule(parent), PrunerModuleWrapper):
        return parent
    return name


def _outer_sets(model: nn.Module, sets: list[tuple[str, ...]]) -> list[tuple[str, ...]]:
    return [tuple(_outer(model, n) for n in members) for members in sets]


class Dependency:
    """Base of the analyses: the model and its example input (``traced_model`` is NNI's jit graph,
    not accepted: purecompress captures with ``torch.fx``).

    Args:
        model: the model (not modified).
        dummy_input: an example input (a tensor, a tuple of positional inputs or a dict).
        traced_model: must be None.
    """

    def __init__(self, model: nn.Module | None = None, dummy_input: Any = None, traced_model: Any = None) -> None:
        if traced_model is not None:
            raise ValueError(f"{type(self).__name__}: traced_model (a torch.jit graph) is not accepted; purecompress "
                             "captures the graph with torch.fx: pass model and dummy_input")
        if not isinstance(model, nn.Module) or dummy_input is None:
            raise ValueError(f"{type(self).__name__} needs the model (an nn.Module) and dummy_input (an example "
                             "input, e.g. torch.rand(1, 3, 224, 224))")
        self.model = model
        self.dummy_input = dummy_input

    #: NNI's CSV header of :meth:`export`.
    _csv_header: tuple[str, str] = ("", "")

    def _csv_rows(self) -> list[list[Any]]:
        raise NotImplementedError

    def export(self, filepath: str | os.PathLike[str]) -> None:
        """Write NNI's CSV: the analysis' two-column header, then one row per set, layer or block."""
        with open(filepath, "w", newline="") as f:
            writer = csv.writer(f, delimiter=",")
            writer.writerow(list(self._csv_header))
            writer.writerows(self._csv_rows())


class _SetDependency(Dependency):
    """Dependencies given as a partition of layers (abstract: leaves say which analysis)."""

    _sets: list[tuple[str, ...]]

    @property
    def dependency(self) -> dict[str, set[str]]:
        """NNI's dict: each layer with a dependency -> its whole set (one set object per set)."""
        out: dict[str, set[str]] = {}
        for members in self._sets:
            if len(members) > 1:
                shared = set(members)
                out.update(dict.fromkeys(members, shared))
        return out

    @property
    def dependency_sets(self) -> list[set[str]]:
        """Every analysed layer in one set, layers without a dependency alone, in graph order."""
        return [set(members) for members in self._sets]

    _csv_header = ("Dependency Set", "Layers")

    def _csv_rows(self) -> list[list[Any]]:
        return [[f"Set {index}", *members] for index, members in enumerate(self._sets, 1)]


class ChannelDependency(_SetDependency):
    """Layers whose output channels must share one mask (they meet at add/sub/mul/div, or at a
    cat off the channel dim).

    Args:
        model, dummy_input, traced_model: see :class:`Dependency`.
        prune_type: ``'Filter'`` (the conv/linear layers, default) or ``'Batchnorm'`` (the
            BatchNorm2d layers, for masks on the norms as the Slim pruner makes).

    Attributes:
        dependency, dependency_sets: see :class:`_SetDependency` (NNI's formats).

    >>> import torch
    >>> class Residual(nn.Module):
    ...     def __init__(self) -> None:
    ...         super().__init__()
    ...         self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 1)
    ...     def forward(self, x):
    ...         y = self.a(x)
    ...         return y + self.b(y)
    >>> [sorted(s) for s in ChannelDependency(Residual(), torch.zeros(1, 3, 4, 4)).dependency_sets]
    [['a', 'b']]
    """

    def __init__(self, model: nn.Module, dummy_input: Any, traced_model: Any = None,
                 prune_type: str = "Filter") -> None:
        if prune_type not in ("Filter", "Batchnorm"):
            raise ValueError(f"prune_type must be 'Filter' or 'Batchnorm', got {prune_type!r}")
        super().__init__(model, dummy_input, traced_model)
        self.prune_type = prune_type
        types = PRODUCER_TYPES if prune_type == "Filter" else (nn.BatchNorm2d,)
        self._sets = _outer_sets(model, channel_dependency(model, dummy_input, producer_types=types,
                                                           couple_depthwise=False))  # NNI's sets


class InputChannelDependency(_SetDependency):
    """Layers whose input channels must share one mask (they read the same tensor, through ops
    that keep its channels).

    Args:
        model, dummy_input, traced_model: see :class:`Dependency`.
    """

    def __init__(self, model: nn.Module, dummy_input: Any, traced_model: Any = None) -> None:
        super().__init__(model, dummy_input, traced_model)
        self._sets = _outer_sets(model, input_channel_dependency(model, dummy_input))


class GroupDependency(Dependency):
    """The number each conv's output channel count must stay divisible by (its groups, and the
    groups of the grouped convs and GroupNorms it feeds).

    Args:
        model, dummy_input, traced_model: see :class:`Dependency`.

    Attributes:
        groups: ``{layer: [every group count that constrains it]}``.
        dependency: ``{layer: lcm of its group counts}`` (also ``dependency_sets``).
        min_groups: ``{layer: the smallest count when it divides the others, else 1}`` (NNI's).

    >>> import torch
    >>> net = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=4))
    >>> GroupDependency(net, torch.zeros(1, 3, 4, 4)).dependency
    {'0': 4, '2': 4}
    """

    def __init__(self, model: nn.Module, dummy_input: Any, traced_model: Any = None) -> None:
        super().__init__(model, dummy_input, traced_model)
        self.groups = {_outer(model, name): list(counts)
                       for name, counts in group_constraints(model, dummy_input).items()}
        self.dependency = {name: math.lcm(*counts) for name, counts in self.groups.items()}
        self.min_groups = {name: min(counts) if min(counts) == math.gcd(*counts) else 1
                           for name, counts in self.groups.items()}

    @property
    def dependency_sets(self) -> dict[str, int]:
        """Same as :attr:`dependency` (NNI's name)."""
        return self.dependency

    _csv_header = ("Conv Layer Name", "Group")

    def _csv_rows(self) -> list[list[Any]]:
        return [[name, groups] for name, groups in self.dependency.items()]


class AttentionWeightDependency(Dependency):
    """The Q, K, V and output projections (Linear layers) of each attention block.

    Args:
        model, dummy_input, traced_model: see :class:`Dependency`.

    Attributes:
        dependency: ``{matmul node: [q, k, v, out]}`` for each attention block found.
        dependency_sets: the 4-layer lists, in graph order.
    """

    def __init__(self, model: nn.Module | None = None, dummy_input: Any = None, traced_model: Any = None) -> None:
        super().__init__(model, dummy_input, traced_model)
        found = attention_dependency(model, dummy_input)  # type: ignore[arg-type]
        self.dependency = {node: [_outer(model, n) for n in layers] for node, layers in found.items()}  # type: ignore[arg-type]

    @property
    def dependency_sets(self) -> list[list[str]]:
        """The 4-layer lists ``[q, k, v, out]`` (Q, K, V in walk order), in graph order."""
        return list(self.dependency.values())

    _csv_header = ("Attention layer matmul op", "Group")

    def _csv_rows(self) -> list[list[Any]]:
        return [[node, layers] for node, layers in self.dependency.items()]

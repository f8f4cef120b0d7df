"""Selecting configs against a model: which module gets which config (NNI's rules).

The last config that matches a module wins; if the winner has ``exclude=True`` the module is not
compressed. Selectors that match nothing produce a warning instead of passing silently.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Generic, Protocol, TypeVar

import attrs
from torch import nn

from purecompress.config import Selector

__all__ = ["Plan", "PlanEntry", "UnmatchedSelectorWarning", "select"]


class UnmatchedSelectorWarning(UserWarning):
    """A config names op types or module names that the model does not have."""


class _HasSelector(Protocol):
    @property
    def selector(self) -> Selector: ...


C = TypeVar("C", bound=_HasSelector)


@attrs.frozen
class PlanEntry(Generic[C]):
    """One selected module.

    Attributes:
        module: qualified module name (``named_modules()``).
        type_name: the module's class name.
        index: index of the winning config in the config list.
        config: the winning config.
        params: shapes of the module's own (non-recursive) parameters and buffers, by full name.
    """

    module: str
    type_name: str
    index: int
    config: C
    params: Mapping[str, tuple[int, ...]]


@attrs.frozen
class Plan(Generic[C]):
    """Module name -> the config that applies, in ``named_modules()`` order.

    Attributes:
        entries: the selected modules.
    """

    entries: tuple[PlanEntry[C], ...]

    def __iter__(self) -> Iterator[PlanEntry[C]]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, module: object) -> bool:
        return any(e.module == module for e in self.entries)

    def __getitem__(self, module: str) -> PlanEntry[C]:
        for entry in self.entries:
            if entry.module == module:
                return entry
        raise KeyError(f"module {module!r} is not in this plan")

    @property
    def modules(self) -> tuple[str, ...]:
        """Selected module names."""
        return tuple(e.module for e in self.entries)

    def targets(self, param: str = "weight") -> dict[str, PlanEntry[C]]:
        """Full parameter name (``'conv1.weight'``) -> entry, for modules that have ``param``."""
        out = {}
        for entry in self.entries:
            key = f"{entry.module}.{param}" if entry.module else param
            if key in entry.params:
                out[key] = entry
        return out

    def groups(self) -> dict[int, tuple[str, ...]]:
        """Config index -> the modules it won (NNI's config groups)."""
        out: dict[int, list[str]] = {}
        for entry in self.entries:
            out.setdefault(entry.index, []).append(entry.module)
        return {i: tuple(names) for i, names in out.items()}


def _own_params(module: nn.Module, name: str) -> dict[str, tuple[int, ...]]:
    prefix = f"{name}." if name else ""
    tensors = list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False))
    return {prefix + n: tuple(t.shape) for n, t in tensors if t is not None}


def select(model: nn.Module, configs: Sequence[C], *, warn: bool = True) -> Plan[C]:
    """Match ``configs`` against the submodules of ``model`` (the root module is never selected).

    Args:
        model: the model; only read.
        configs: records with a ``selector`` (e.g. from :func:`purecompress.from_config_list`).
        warn: emit :class:`UnmatchedSelectorWarning` for op types / names that match nothing.

    Returns:
        The :class:`Plan`: each module whose last matching config does not exclude it.

    >>> import torch
    >>> from purecompress.config import from_config_list
    >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> plan = select(model, from_config_list([{'sparsity': 0.5, 'op_types': ['default']},
    ...                                         {'exclude': True, 'op_names': ['2']}]))
    >>> plan.modules
    ('0',)
    """
    modules = [(n, m) for n, m in model.named_modules() if m is not model]
    entries = []
    for name, module in modules:
        type_name = type(module).__name__
        winner = None
        for index in reversed(range(len(configs))):
            if configs[index].selector.matches(name, type_name):
                winner = index
                break
        if winner is not None and not configs[winner].selector.exclude:
            entries.append(PlanEntry(name, type_name, winner, configs[winner], _own_params(module, name)))
    if warn:
        _warn_unmatched(modules, configs)
    return Plan(tuple(entries))


def _warn_unmatched(modules: list[tuple[str, nn.Module]], configs: Sequence[_HasSelector]) -> None:
    names = {n for n, _ in modules}
    types = {type(m).__name__ for _, m in modules}
    for index, config in enumerate(configs):
        sel = config.selector
        problems = []
        missing_types = [t for t in sel.op_types or () if t != "default" and t not in types]
        if missing_types:
            problems.append(f"op_types {missing_types}")
        missing_names = [n for n in sel.op_names or () if n not in names]
        missing_names += [p for p in sel.op_partial_names or () if not any(p in n for n in names)]
        missing_names += [r for r in sel.op_names_re or () if not any(re.fullmatch(r, n) for n in names)]
        if missing_names:
            problems.append(f"names {missing_names}")
        if problems:
            warnings.warn(f"config_list[{index}]: {' and '.join(problems)} match no module of the model",
                          UnmatchedSelectorWarning, stacklevel=3)
        elif not any(sel.matches(n, type(m).__name__) for n, m in modules):
            warnings.warn(f"config_list[{index}] selects no module of the model (types and names "
                          "match separately, never together)", UnmatchedSelectorWarning, stacklevel=3)

"""The selector vocabulary shared by pruning and quantization: which modules a config names, and
:func:`select`, which gives each module the config that applies to it (NNI 2.10 rules).

A config entry names modules by type and name (:class:`Selector`); :func:`select` walks a model and
returns a :class:`Plan`: the last config that matches a module wins, and a winner with
``exclude=True`` removes the module. Selectors that match nothing warn
(:class:`UnmatchedSelectorWarning`) instead of passing silently. Every problem in a config entry is a
:class:`ConfigError` that names the entry index, the key and the reason.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Generic, Protocol, TypeVar

import attrs
from torch import nn

__all__ = [
    "DEFAULT_OP_TYPES",
    "SELECTOR_KEYS",
    "ConfigError",
    "Plan",
    "PlanEntry",
    "Selector",
    "UnmatchedSelectorWarning",
    "check_op_types",
    "parse_selector",
    "select",
    "tied_params",
]


# NNI's 'default' op type: the weighted module types (no norm layers).
DEFAULT_OP_TYPES: tuple[str, ...] = (
    "Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d",
    "Linear", "Bilinear", "PReLU", "Embedding", "EmbeddingBag",
)  # fmt: skip


SELECTOR_KEYS = ("op_types", "op_names", "op_partial_names", "op_names_re", "exclude")



class ConfigError(ValueError):
    """A config entry is invalid. ``index`` and ``key`` say where (None when not one key)."""

    def __init__(self, index: int | None, key: str | None, reason: str) -> None:
        where = "config" if index is None else f"config_list[{index}]"
        if key is not None:
            where += f"[{key!r}]"
        super().__init__(f"{where}: {reason}")
        self.index = index
        self.key = key
        self.reason = reason



def _names(index: int | None, key: str, value: object) -> tuple[str, ...]:
    # NNI's schema takes lists only; a tuple keeps its order, so it is taken too. A set (arbitrary
    # order), a dict (only its keys would count) or a string (its characters) is refused.
    if not isinstance(value, (list, tuple)):
        raise ConfigError(index, key, f"must be a list of strings, got {type(value).__name__} {value!r}")
    items = tuple(value)
    if not all(isinstance(v, str) for v in items):
        raise ConfigError(index, key, f"must be a list of strings, got {value!r}")
    return items



@attrs.frozen
class Selector:
    """Which modules a config applies to (NNI semantics).

    A module matches when its type is in ``op_types`` (if given) AND its name is selected by
    ``op_names`` / ``op_partial_names`` (substring) / ``op_names_re`` (full regex match), when any
    of those is given (the name selectors are a union, as NNI merges partial names into op_names).

    Attributes:
        op_types: module class names; ``'default'`` expands to :data:`DEFAULT_OP_TYPES`.
        op_names: exact qualified module names.
        op_partial_names: substrings of module names.
        op_names_re: regular expressions that must match the whole module name.
        exclude: the matched modules are removed from compression (last match wins).
    """

    op_types: tuple[str, ...] | None = None
    op_names: tuple[str, ...] | None = None
    op_partial_names: tuple[str, ...] | None = None
    op_names_re: tuple[str, ...] | None = None
    exclude: bool = False

    def __attrs_post_init__(self) -> None:
        if self.op_types is None and self.op_names is None and self.op_partial_names is None \
                and self.op_names_re is None:
            raise ConfigError(None, None, "at least one of op_types, op_names, op_partial_names "
                              "or op_names_re must be specified")
        for pattern in self.op_names_re or ():
            try:
                re.compile(pattern)
            except (re.error, OverflowError, RecursionError) as err:  # huge repeats, deep nesting
                raise ConfigError(None, "op_names_re", f"bad regular expression {pattern!r}: {err}") from err

    @property
    def types(self) -> tuple[str, ...] | None:
        """``op_types`` with ``'default'`` expanded to :data:`DEFAULT_OP_TYPES`."""
        if self.op_types is None or "default" not in self.op_types:
            return self.op_types
        return tuple(dict.fromkeys([t for t in self.op_types if t != "default"] + list(DEFAULT_OP_TYPES)))

    def matches(self, name: str, type_name: str) -> bool:
        """Whether the module called ``name`` of class ``type_name`` is selected."""
        types = self.types
        if types is not None and type_name not in types:
            return False
        if self.op_names is None and self.op_partial_names is None and self.op_names_re is None:
            return True
        return (
            name in (self.op_names or ())
            or any(part in name for part in self.op_partial_names or ())
            or any(re.fullmatch(p, name) for p in self.op_names_re or ())
        )



def parse_selector(index: int, entry: Mapping[str, object]) -> Selector:
    """The :class:`Selector` of one NNI config dict (errors name ``index``)."""
    kwargs: dict[str, object] = {}
    for key in ("op_types", "op_names", "op_partial_names", "op_names_re"):
        if key in entry:
            kwargs[key] = _names(index, key, entry[key])
    if "exclude" in entry:
        if not isinstance(entry["exclude"], bool):
            raise ConfigError(index, "exclude", f"must be True or False, got {entry['exclude']!r}")
        kwargs["exclude"] = entry["exclude"]
    try:
        return Selector(**kwargs)  # type: ignore[arg-type]
    except ConfigError as err:
        raise ConfigError(index, err.key, err.reason) from None



def check_op_types(index: int, selector: Selector, allowed: Sequence[str] | None) -> None:
    """Raise when ``selector`` names op types outside ``allowed`` (a pruner's supported types)."""
    if allowed is None or selector.exclude or selector.op_types is None:
        return
    bad = [t for t in selector.op_types if t not in allowed]
    if bad:
        raise ConfigError(index, "op_types", f"{bad} not supported here; supported: {list(allowed)}")



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
        params: shapes of the module's own (non-recursive) parameters and buffers, by the full name
            :func:`~purecompress.params_of` lists them under (a tied parameter by its first name:
            GPT-2's ``lm_head`` has ``{'transformer.wte.weight': ...}``).
        tied: the module's own names of tied parameters -> the key in ``params``
            (``{'lm_head.weight': 'transformer.wte.weight'}``); empty when none is tied.
    """

    module: str
    type_name: str
    index: int
    config: C
    params: Mapping[str, tuple[int, ...]]
    tied: Mapping[str, str] = attrs.field(factory=dict)

    def key(self, param: str) -> str | None:
        """The params key of the module's ``param`` (``'weight'``), or None when it has none."""
        own = f"{self.module}.{param}" if self.module else param
        key = self.tied.get(own, own)
        return key if key in self.params else None



@attrs.frozen
class Plan(Generic[C]):
    """Module name -> the config that applies, in ``named_modules()`` order.

    A tied parameter (one tensor under several names, :func:`tied_params`) is one target under
    the name :func:`~purecompress.params_of` gives it, whichever of its modules selected it.

    Attributes:
        entries: the selected modules.
        tied: every tied name of the model -> the name params are keyed by (:func:`tied_params`).
    """

    entries: tuple[PlanEntry[C], ...]
    tied: Mapping[str, str] = attrs.field(factory=dict)

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
        """Full parameter name (``'conv1.weight'``) -> entry, for modules that have ``param``.

        A tied parameter appears once, under its params key, with the first module (in model
        order) that selected it; :func:`select` has checked that every module selecting it won
        the same config.
        """
        out: dict[str, PlanEntry[C]] = {}
        for entry in self.entries:
            key = entry.key(param)
            if key is not None and key not in out:
                out[key] = entry
        return out

    def aliases(self) -> dict[str, tuple[str, ...]]:
        """Params key -> its other names, for each tied tensor of the model
        (``{'transformer.wte.weight': ('lm_head.weight',)}``)."""
        out: dict[str, list[str]] = {}
        for alias, key in self.tied.items():
            out.setdefault(key, []).append(alias)
        return {key: tuple(names) for key, names in out.items()}

    def groups(self) -> dict[int, tuple[str, ...]]:
        """Config index -> the modules it won (NNI's config groups)."""
        out: dict[int, list[str]] = {}
        for entry in self.entries:
            out.setdefault(entry.index, []).append(entry.module)
        return {i: tuple(names) for i, names in out.items()}



def tied_params(model: nn.Module) -> dict[str, str]:
    """Each *other* name of a tensor the model holds under several names -> the name
    :func:`~purecompress.params_of` lists it under (its first name in
    ``named_parameters()``/``named_buffers()`` order).

    GPT-2's ``lm_head.weight`` *is* ``transformer.wte.weight``: ``params_of`` has one key for the
    one tensor, :func:`select` resolves a module's tied parameters to that key, and
    ``torch.func.functional_call`` (``tie_weights=True``, its default) gives the value passed under
    that key to every use, so one mask or one quantizer acts on both.

    >>> import torch
    >>> emb, head = torch.nn.Embedding(5, 3), torch.nn.Linear(3, 5, bias=False)
    >>> head.weight = emb.weight
    >>> tied_params(torch.nn.ModuleDict({'emb': emb, 'head': head}))
    {'head.weight': 'emb.weight'}
    """
    named = list(model.named_parameters(remove_duplicate=False)) + list(model.named_buffers(remove_duplicate=False))
    first: dict[int, str] = {}  # the tensors stay alive in `named`, so their ids are unique
    out = {}
    for name, tensor in named:
        owner = first.setdefault(id(tensor), name)
        if owner != name:
            out[name] = owner
    return out



def _own_params(module: nn.Module, name: str, tied: Mapping[str, str]) -> dict[str, tuple[int, ...]]:
    prefix = f"{name}." if name else ""
    tensors = list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False))
    return {tied.get(prefix + n, prefix + n): tuple(t.shape) for n, t in tensors if t is not None}



def _own_tied(module: nn.Module, name: str, tied: Mapping[str, str]) -> dict[str, str]:
    prefix = f"{name}." if name else ""
    own = [prefix + n for n, _ in module.named_parameters(recurse=False)]
    own += [prefix + n for n, _ in module.named_buffers(recurse=False)]
    return {n: tied[n] for n in own if n in tied}



def _check_tied(entries: Sequence[PlanEntry[C]], tied: Mapping[str, str]) -> None:
    """One tensor takes one config: modules sharing a tied parameter must win the same one."""
    claims: dict[str, PlanEntry[C]] = {}
    for entry in entries:
        for key in entry.params:
            first = claims.setdefault(key, entry)
            if first.index != entry.index:
                names = [n for n, k in tied.items() if k == key]
                raise ConfigError(entry.index, None, f"{entry.module!r} and {first.module!r} share the tied tensor "
                                  f"{key!r} (also named {names}), which config_list[{first.index}] selects "
                                  f"through {first.module!r}; one tensor takes one config: exclude one of the modules "
                                  "or select both with the same config")



def select(model: nn.Module, configs: Sequence[C], *, warn: bool = True) -> Plan[C]:
    """Match ``configs`` against the submodules of ``model`` (the root module is never selected).

    Args:
        model: the model; only read.
        configs: records with a ``selector`` (e.g. from :func:`purecompress.from_config_list`).
        warn: emit :class:`UnmatchedSelectorWarning` for op types / names that match nothing.

    Returns:
        The :class:`Plan`: each module whose last matching config does not exclude it.

    >>> import torch
    >>> from purecompress import from_config_list
    >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> plan = select(model, from_config_list([{'sparsity': 0.5, 'op_types': ['default']},
    ...                                         {'exclude': True, 'op_names': ['2']}]))
    >>> plan.modules
    ('0',)
    """
    _check_configs(configs)
    tied = tied_params(model)
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
            entries.append(PlanEntry(name, type_name, winner, configs[winner], _own_params(module, name, tied),
                                     _own_tied(module, name, tied)))
    _check_tied(entries, tied)
    if warn:
        _warn_unmatched(modules, configs)
    return Plan(tuple(entries), tied)



def _check_configs(configs: object) -> None:
    """Raise a ConfigError that says what to pass when ``configs`` are not parsed config records."""
    if not isinstance(configs, Sequence) or isinstance(configs, (str, bytes)):
        raise ConfigError(None, None, f"configs must be a list of parsed configs, got {type(configs).__name__}; "
                          "parse an NNI config_list with purecompress.from_config_list(config_list) (pruning) or "
                          "purecompress.quant.from_quant_config_list(config_list) (quantization)")
    for index, config in enumerate(configs):
        if not isinstance(getattr(config, "selector", None), Selector):
            what = "an NNI config dict" if isinstance(config, Mapping) else type(config).__name__
            raise ConfigError(index, None, f"is {what}, not a parsed config; pass "
                              "purecompress.from_config_list(config_list) (pruning) or "
                              "purecompress.quant.from_quant_config_list(config_list) (quantization)")



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

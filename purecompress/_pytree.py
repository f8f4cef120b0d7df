"""Immutable records that are pytrees for both optree and ``torch.utils._pytree``.

This is the one place where purecompress registers pytree nodes. A record is an attrs frozen
class; fields holding tensors (or nested containers of tensors) are pytree children, fields
marked with :func:`static` (shapes, names, options) travel in the tree spec.

``torch.func`` transforms (``vmap``, ``grad``) flatten their inputs with torch's own pytree, so a
record passed through them must be registered there; optree is what users and purecompress use
to map over trees (``optree.tree_map(f, tree, namespace=NAMESPACE)``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, TypeVar

import attrs
import optree
import torch
import torch.utils._pytree as torch_pytree
from typing_extensions import dataclass_transform

__all__ = ["NAMESPACE", "record", "static", "static_record", "trees_equal"]

NAMESPACE = "purecompress"
_STATIC = "purecompress_static"
_CACHE = "purecompress_cache"

T = TypeVar("T")


def static(**kwargs: Any) -> Any:
    """An attrs field that is metadata of the tree (not a child): shapes, names, options."""
    metadata = dict(kwargs.pop("metadata", {}))
    metadata[_STATIC] = True
    return attrs.field(metadata=metadata, **kwargs)


def cache(*, init: Literal[False] = False) -> Any:
    """A private memo (a dict) for values derived from the record's own fields: never a child,
    never compared, not an ``__init__`` argument, a new empty dict whenever the record is built or
    rebuilt. The record's fields never change; a memo entry must be keyed by everything it is
    derived from (dtype, device, the tensor's version counter), so it can never be stale."""
    del init  # declared for type checkers (dataclass_transform): a memo is never an argument
    return attrs.field(init=False, factory=dict, eq=False, repr=False, metadata={_CACHE: True})


def trees_equal(a: Any, b: Any) -> bool:
    """Structural equality where tensor leaves compare with :func:`torch.equal`."""
    leaves_a, spec_a = optree.tree_flatten(a, namespace=NAMESPACE, none_is_leaf=True)
    leaves_b, spec_b = optree.tree_flatten(b, namespace=NAMESPACE, none_is_leaf=True)
    if spec_a != spec_b:
        return False
    for x, y in zip(leaves_a, leaves_b):
        if isinstance(x, torch.Tensor) or isinstance(y, torch.Tensor):
            if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)):
                return False
            if x.shape != y.shape or x.dtype != y.dtype or not torch.equal(x, y):
                return False
        elif x != y:
            return False
    return True


@dataclass_transform(frozen_default=True, field_specifiers=(attrs.field, static, cache))
def record(cls: type[T]) -> type[T]:
    """Make ``cls`` a frozen attrs record registered as a pytree node (optree and torch).

    Equality compares tensors with :func:`torch.equal`; records are unhashable because their
    tensors are.
    """
    cls = attrs.frozen(eq=False, slots=True)(cls)
    fields = attrs.fields(cls)  # type: ignore[arg-type]  # cls is an attrs class from here on
    cls.__init__ = _compile_friendly_init(cls.__init__, fields)  # type: ignore[method-assign]
    data = [f for f in fields if not f.metadata.get(_CACHE, False)]
    caches = tuple(f.name for f in fields if f.metadata.get(_CACHE, False))
    children = tuple(f.name for f in data if not f.metadata.get(_STATIC, False))
    statics = tuple(f.name for f in data if f.metadata.get(_STATIC, False))

    def flatten(obj: Any) -> tuple[list[Any], tuple[Any, ...]]:
        return [getattr(obj, n) for n in children], tuple(getattr(obj, n) for n in statics)

    def unflatten(context: tuple[Any, ...], values: Any) -> Any:
        kwargs = dict(zip(children, values))
        kwargs.update(zip(statics, context))
        # Bypass validators: inside vmap/grad children may be traced tensors or placeholders.
        obj = object.__new__(cls)
        for name, value in kwargs.items():
            object.__setattr__(obj, name, value)
        for name in caches:
            object.__setattr__(obj, name, {})
        return obj

    def optree_flatten(obj: Any) -> tuple[list[Any], tuple[Any, ...], tuple[str, ...]]:
        values, context = flatten(obj)
        return values, context, children

    # torch's pytree treats None as a leaf (optree as an empty node): for torch, None children
    # travel in the spec, so torch.func transforms only ever see tensor leaves.
    def torch_flatten(obj: Any) -> tuple[list[Any], tuple[Any, ...]]:
        values, context = flatten(obj)
        present = tuple(v is not None for v in values)
        return [v for v in values if v is not None], (context, present)

    def torch_unflatten(values: Any, ctx: tuple[Any, ...]) -> Any:
        context, present = ctx
        it = iter(values)
        return unflatten(context, [next(it) if p else None for p in present])

    optree.register_pytree_node(
        cls, optree_flatten, lambda ctx, values: unflatten(ctx, values), namespace=NAMESPACE  # type: ignore[arg-type]
    )
    torch_pytree.register_pytree_node(
        cls,
        torch_flatten,
        torch_unflatten,
        serialized_type_name=f"{cls.__module__}.{cls.__qualname__}",
    )

    def __eq__(self: Any, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return trees_equal(self, other)

    cls.__eq__ = __eq__  # type: ignore[method-assign]
    cls.__hash__ = None  # type: ignore[assignment]
    return cls


@dataclass_transform(frozen_default=True, field_specifiers=(attrs.field,))
def static_record(cls: type[T]) -> type[T]:
    """Make ``cls`` a frozen attrs record that is *not* a pytree node (granularities, configs):
    hashable, compared by value, and constructible inside ``torch.compile(fullgraph=True)``."""
    cls = attrs.frozen(cls)
    fields = attrs.fields(cls)  # type: ignore[arg-type]  # cls is an attrs class from here on
    cls.__init__ = _compile_friendly_init(cls.__init__, fields)  # type: ignore[method-assign]
    return cls


def _compile_friendly_init(attrs_init: Callable[..., None], fields: Any) -> Callable[..., None]:
    """attrs' frozen ``__init__``, except while ``torch.compile`` traces: there (dynamo cannot
    trace attrs' cached ``object.__setattr__``) fields are set directly, with defaults and
    converters applied and validators skipped, as in pytree unflattening."""
    # Plain tuples (not attrs objects) so dynamo can read them without a graph break.
    names = tuple(f.name for f in fields)
    factories = tuple(isinstance(f.default, attrs.Factory) for f in fields)  # type: ignore[arg-type]
    # the factory callables themselves: dynamo cannot wrap attrs.Factory objects
    makers = tuple(f.default.factory if factory else None for f, factory in zip(fields, factories))
    self_makers = tuple(bool(factory and f.default.takes_self) for f, factory in zip(fields, factories))
    defaults = tuple(None if factory else f.default for f, factory in zip(fields, factories))
    converters = tuple(f.converter for f in fields)

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        if not torch.compiler.is_compiling():
            attrs_init(self, *args, **kwargs)
            return
        for i, name in enumerate(names):
            if i < len(args):
                value = args[i]
            elif name in kwargs:
                value = kwargs[name]
            elif factories[i]:
                make: Callable[..., Any] = makers[i]  # type: ignore[assignment]  # set where factories[i]
                value = make(self) if self_makers[i] else make()
            else:
                value = defaults[i]
            if converters[i] is not None:
                value = converters[i](value)
            object.__setattr__(self, name, value)

    __init__.__wrapped__ = attrs_init  # type: ignore[attr-defined]
    return __init__


def is_traced(t: torch.Tensor) -> bool:
    """Whether ``t`` is seen through ``torch.func`` transforms or ``torch.compile``: code may then
    take no data-dependent branch or shape (no ``.item()``, no ``nonzero``)."""
    return torch.compiler.is_compiling() or torch._C._functorch.is_functorch_wrapped_tensor(t)


def tree_map(fn: Callable[..., Any], tree: Any, *rest: Any) -> Any:
    """``optree.tree_map`` in purecompress's namespace (records are nodes, not leaves)."""
    return optree.tree_map(fn, tree, *rest, namespace=NAMESPACE)

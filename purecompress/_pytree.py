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
from typing import Any, TypeVar

import attrs
import optree
import torch
import torch.utils._pytree as torch_pytree

__all__ = ["NAMESPACE", "record", "static", "trees_equal"]

NAMESPACE = "purecompress"
_STATIC = "purecompress_static"

T = TypeVar("T")


def static(**kwargs: Any) -> Any:
    """An attrs field that is metadata of the tree (not a child): shapes, names, options."""
    metadata = dict(kwargs.pop("metadata", {}))
    metadata[_STATIC] = True
    return attrs.field(metadata=metadata, **kwargs)


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


def record(cls: type[T]) -> type[T]:
    """Make ``cls`` a frozen attrs record registered as a pytree node (optree and torch).

    Equality compares tensors with :func:`torch.equal`; records are unhashable because their
    tensors are.
    """
    cls = attrs.frozen(eq=False, slots=True)(cls)
    fields = attrs.fields(cls)
    children = tuple(f.name for f in fields if not f.metadata.get(_STATIC, False))
    statics = tuple(f.name for f in fields if f.metadata.get(_STATIC, False))

    def flatten(obj: Any) -> tuple[list[Any], tuple[Any, ...]]:
        return [getattr(obj, n) for n in children], tuple(getattr(obj, n) for n in statics)

    def unflatten(context: tuple[Any, ...], values: Any) -> Any:
        kwargs = dict(zip(children, values))
        kwargs.update(zip(statics, context))
        # Bypass validators: inside vmap/grad children may be traced tensors or placeholders.
        obj = object.__new__(cls)
        for name, value in kwargs.items():
            object.__setattr__(obj, name, value)
        return obj

    def optree_flatten(obj: Any) -> tuple[list[Any], tuple[Any, ...], tuple[str, ...]]:
        values, context = flatten(obj)
        return values, context, children

    optree.register_pytree_node(
        cls, optree_flatten, lambda ctx, values: unflatten(ctx, values), namespace=NAMESPACE
    )
    torch_pytree.register_pytree_node(
        cls,
        flatten,
        lambda values, ctx: unflatten(ctx, values),
        serialized_type_name=f"{cls.__module__}.{cls.__qualname__}",
    )

    def __eq__(self: Any, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return trees_equal(self, other)

    cls.__eq__ = __eq__  # type: ignore[method-assign]
    cls.__hash__ = None  # type: ignore[assignment]
    return cls


def tree_map(fn: Callable[..., Any], tree: Any, *rest: Any) -> Any:
    """``optree.tree_map`` in purecompress's namespace (records are nodes, not leaves)."""
    return optree.tree_map(fn, tree, *rest, namespace=NAMESPACE)

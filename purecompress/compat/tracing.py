"""``nni.trace``: record how an object was built so it can be built again.

Same as NNI's ``nni.trace`` for what compression scripts use it for: wrapping an optimizer class
(``nni.trace(torch.optim.SGD)(model.parameters(), lr=0.01)``) so a pruner can rebuild the
optimizer for the wrapped model. The instance keeps ``trace_symbol``, ``trace_args`` and
``trace_kwargs``; :func:`rebuild` (or ``obj.trace_copy()`` for a traced class) builds a new one.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

__all__ = ["is_traceable", "rebuild", "trace"]

T = TypeVar("T")


def _materialise(args: tuple[Any, ...]) -> list[Any]:
    # A generator (model.parameters()) would be consumed by the call: record its items instead.
    return [list(a) if isinstance(a, Iterator) else a for a in args]


def _record(obj: Any, symbol: Callable[..., Any], args: list[Any], kwargs: dict[str, Any]) -> None:
    object.__setattr__(obj, "trace_symbol", symbol)
    object.__setattr__(obj, "trace_args", args)
    object.__setattr__(obj, "trace_kwargs", kwargs)


def _trace_class(cls: type) -> type:
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        items = _materialise(args)
        cls.__init__(self, *items, **kwargs)
        _record(self, cls, items, dict(kwargs))

    def trace_copy(self: Any) -> Any:
        """A new instance built from the recorded arguments."""
        return rebuild(self)

    namespace = {"__init__": __init__, "trace_copy": trace_copy, "__module__": cls.__module__,
                 "__qualname__": cls.__qualname__, "__doc__": cls.__doc__, "_traced_from": cls}
    return type(cls.__name__, (cls,), namespace)


def _trace_function(fn: Callable[..., T]) -> Callable[..., T]:
    @functools.wraps(fn)
    def traced(*args: Any, **kwargs: Any) -> T:
        items = _materialise(args)
        out = fn(*items, **kwargs)
        try:
            _record(out, fn, items, dict(kwargs))
        except (AttributeError, TypeError):  # results without a __dict__ (ints, tuples) stay as they are
            pass
        return out

    return traced


def trace(cls_or_func: Any = None, *, kw_only: bool = True, inheritable: bool = False) -> Any:
    """Wrap a class or function so that what it builds remembers its arguments.

    Usable as ``trace(cls)``, ``@trace`` or ``@trace(kw_only=False)`` (the keywords are accepted
    for NNI compatibility; every argument is recorded).

    >>> import torch
    >>> opt = trace(torch.optim.SGD)(torch.nn.Linear(2, 1).parameters(), lr=0.1)
    >>> isinstance(opt, torch.optim.SGD), opt.trace_kwargs
    (True, {'lr': 0.1})
    >>> is_traceable(opt)
    True
    """
    del kw_only, inheritable
    if cls_or_func is None:
        return trace
    if isinstance(cls_or_func, type):
        return _trace_class(cls_or_func)
    if callable(cls_or_func):
        return _trace_function(cls_or_func)
    raise TypeError(f"trace() takes a class or a function, got {type(cls_or_func).__name__}")


def is_traceable(obj: Any) -> bool:
    """Whether ``obj`` was built through :func:`trace`."""
    return all(name in getattr(obj, "__dict__", {}) for name in ("trace_symbol", "trace_args", "trace_kwargs"))


def rebuild(obj: Any, *args: Any, **kwargs: Any) -> Any:
    """Build a new object like ``obj``; ``args``/``kwargs`` replace the recorded ones where given.

    >>> import torch
    >>> opt = trace(torch.optim.SGD)(torch.nn.Linear(2, 1).parameters(), lr=0.1)
    >>> new = rebuild(opt, torch.nn.Linear(3, 1).parameters())
    >>> type(new).__name__, new.defaults['lr'], new.param_groups[0]['params'][0].shape
    ('SGD', 0.1, torch.Size([1, 3]))
    """
    if not is_traceable(obj):
        raise TypeError(f"{type(obj).__name__} object was not built through trace()")
    call_args = list(args) + obj.trace_args[len(args):]
    symbol = obj.trace_symbol
    target = trace(symbol) if isinstance(symbol, type) else symbol
    return target(*call_args, **{**obj.trace_kwargs, **kwargs})

"""Running a user's forward for analysis without leaving a trace in the user's model.

Capturing a graph (``torch.fx`` symbolic tracing, a recorded real run) and tracing quantization
sites run the model's own forward, and forwards write state: a buffer updated in place
(``self.steps += 1``), a cache filled in eval mode (timm's LeViT stores its attention biases in
``self.attention_bias_cache``; under fx the stored value is a ``Proxy``, which breaks every later
call and ``copy.deepcopy`` of the model). :func:`state_kept` puts all of that back.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

__all__ = ["state_kept"]


def _snapshot(value: Any) -> Any:
    """A shallow copy of a container's contents (dict, list, set), else None."""
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, list):
        return list(value)
    if isinstance(value, set):
        return set(value)
    return None


def _restore(value: Any, contents: Any) -> None:
    if isinstance(value, dict):
        value.clear()
        value.update(contents)
    elif isinstance(value, list):
        value[:] = contents
    elif isinstance(value, set):
        value.clear()
        value.update(contents)


@contextlib.contextmanager
def state_kept(model: nn.Module) -> Iterator[None]:
    """Puts back what the body writes into ``model``: the values of buffers written in place, and
    every module's public attributes (names without a leading underscore: torch's own ``_``
    fields, parameters, submodules and hooks are left alone), rebound ones and the contents of
    dict/list/set ones (one level deep: a cache dict filled by the forward is emptied again);
    attributes the body adds are removed.

    >>> class Cached(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.cache = {}
    ...     def forward(self, x):
    ...         self.cache['x'] = x
    ...         self.last = x
    ...         return x
    >>> m = Cached()
    >>> with state_kept(m):
    ...     _ = m(torch.ones(1))
    >>> m.cache, hasattr(m, 'last')
    ({}, False)
    """
    buffers = [(b, b._version, b.clone()) for b in model.buffers()]
    saved = []
    for module in model.modules():
        public = {k: v for k, v in vars(module).items() if not k.startswith("_")}
        saved.append((module, public, {k: c for k, v in public.items() if (c := _snapshot(v)) is not None}))
    try:
        yield
    finally:
        with torch.no_grad():
            for b, version, old in buffers:
                if b._version != version:
                    b.copy_(old)
        for module, public, contents in saved:
            attributes = vars(module)
            for key in [k for k in attributes if not k.startswith("_") and k not in public]:
                del attributes[key]
            attributes.update(public)
            for key, values in contents.items():
                _restore(public[key], values)

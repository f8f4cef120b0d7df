"""The one contract of every stateful algorithm, pruning and quantization alike.

A :class:`Transform` is a pair of pure functions in the optax shape::

    state = t.init(params)                               # the first state, from the params
    params, state = t.update(params, state, **aux)       # one step: new params, new state

``update`` never modifies what it is given. ``aux`` is keyword-only and algorithm-specific: the
step (``step=``), gradients, statistics or metrics. Pruning transforms (:func:`~purecompress.agp`,
:func:`~purecompress.pruning`, :func:`~purecompress.lottery_ticket`, :func:`~purecompress.movement`,
:func:`~purecompress.admm`) are :class:`Transform` records; quantization transforms
(:class:`~purecompress.quant.QuantTransform`) have the same ``init``/``update`` methods and, in
addition, run the model (their ``__call__``). Both satisfy :class:`Stateful`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar, runtime_checkable

import attrs
from torch import Tensor

__all__ = ["Params", "Stateful", "Transform"]

#: A parameter dict: ``named_parameters()`` / ``named_buffers()`` names to tensors, what
#: :func:`torch.func.functional_call` takes.
Params = dict[str, Tensor]

S = TypeVar("S")


@runtime_checkable
class Stateful(Protocol[S]):
    """What every stateful algorithm provides: ``init(params) -> state`` and
    ``update(params, state, **aux) -> (params, state)``."""

    def init(self, params: Params) -> S:
        """The first state."""
        ...

    def update(self, params: Params, state: S, **aux: Any) -> tuple[Params, S]:
        """One step: the new params and the new state; the inputs are not modified."""
        ...


@attrs.frozen
class Transform:
    """A pair of pure functions, ``init(params) -> state`` and ``update(params, state, **aux) ->
    (params, state)``: the shape of every stateful transform.

    Attributes:
        init: builds the first state from the params.
        update: one step; returns new params and the new state, never mutating its inputs.

    >>> t = Transform(lambda params: 0, lambda params, state, **aux: (params, state + 1))
    >>> t.update({}, t.init({}))
    ({}, 1)
    >>> isinstance(t, Stateful)
    True
    """

    init: Callable[..., Any]
    update: Callable[..., tuple[Params, Any]]

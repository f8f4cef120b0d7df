"""Parameter dicts: taking them from a model and applying masks to them."""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

from purecompress.pruning._records import Mask
from purecompress.transform import Params

__all__ = [
    "apply_masks",
    "params_of",
]



def params_of(model: nn.Module, *, buffers: bool = True) -> Params:
    """The model's parameters (and buffers) as a detached :data:`Params` dict.

    Keys are ``named_parameters()``/``named_buffers()`` names, exactly what
    :func:`torch.func.functional_call` takes. The tensors share storage with the model (no copy);
    purecompress never writes to them.

    >>> import torch
    >>> sorted(params_of(torch.nn.Linear(2, 3)))
    ['bias', 'weight']
    """
    out = {name: p.detach() for name, p in model.named_parameters()}
    if buffers:
        out.update((name, b.detach()) for name, b in model.named_buffers())
    return out



def apply_masks(params: Mapping[str, Tensor], masks: Mapping[str, Mask]) -> Params:
    """A new dict where each masked parameter has its pruned blocks zeroed.

    Differentiable in ``params`` (gradients of pruned entries are zero); works under
    ``torch.func.vmap``/``grad`` and ``torch.compile``. A key missing from ``masks`` means dense;
    a mask whose key is not in ``params`` is an error (it would be silently ignored otherwise).

    Args:
        params: name -> tensor.
        masks: name -> :class:`~purecompress.Mask` (shape must match the parameter).

    >>> import torch
    >>> from purecompress import Mask
    >>> w = torch.ones(2, 3)
    >>> apply_masks({'w': w}, {'w': Mask(torch.tensor([[True], [False]]), (2, 3))})['w']
    tensor([[1., 1., 1.],
            [0., 0., 0.]])
    """
    unknown = [k for k in masks if k not in params]
    if unknown:
        raise KeyError(f"masks for parameters that are not in params: {unknown}")
    return {k: masks[k].apply(v) if k in masks else v for k, v in params.items()}

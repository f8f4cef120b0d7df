"""Parameter dicts: taking them from a model and applying masks to them."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from purecompress.pruning._records import Mask
from purecompress.transform import Params

__all__ = [
    "apply_masks",
    "output_mask",
    "params_of",
    "simplify_mask",
]



def params_of(model: nn.Module, *, buffers: bool = True) -> Params:
    """The model's parameters (and buffers) as a detached :data:`Params` dict.

    Keys are ``named_parameters()``/``named_buffers()`` names, exactly what
    :func:`torch.func.functional_call` takes. The tensors share storage with the model (no copy);
    purecompress never writes to them. A tied tensor (GPT-2's ``lm_head.weight`` is
    ``transformer.wte.weight``) is listed once, under its first name; :func:`~purecompress.tied_params`
    gives its other names, and a mask or quantizer under that key acts at every use.

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



def simplify_mask(mask: Mask) -> Mask | None:
    """The coarsest record that masks like ``mask``: None when it keeps everything, one block per
    output row (``[out, 1, ...]``) when each row is all kept or all pruned, else ``mask`` itself.

    Lets a forward multiply by the cheapest factor (a wrapper's dense ``weight_mask`` edited by a
    script becomes a channel mask again when it is one).

    >>> import torch
    >>> simplify_mask(Mask.from_dense(torch.ones(2, 3))) is None
    True
    >>> simplify_mask(Mask.from_dense(torch.tensor([[1., 1.], [0., 0.]]))).keep
    tensor([[ True],
            [False]])
    """
    keep = mask.keep
    if bool(keep.all()):
        return None
    if keep.dim() >= 2 and keep.shape[0] == mask.shape[0] and keep[0].numel() > 1:
        rows = keep.reshape(keep.shape[0], -1)
        if bool((rows == rows[:, :1]).all()):
            return Mask(rows[:, :1].reshape(keep.shape[0], *([1] * (keep.dim() - 1))), mask.shape)
    return mask



def output_mask(weight: Mask | None, bias: Mask | None) -> Tensor | None:
    """The ``[out]`` 0/1 factor that masks a linear layer's *output* as ``weight`` and ``bias`` mask
    its parameters, or None when no such factor exists.

    ``y * m`` costs ``batch * out`` where ``W * m`` costs ``out * in`` in the forward and again in the
    backward. It exists when ``weight`` prunes whole output rows (one block per row) and ``bias``
    is absent or prunes exactly those rows (masking the output also zeroes the bias of pruned rows).

    >>> import torch
    >>> rows = Mask(torch.tensor([[True], [False]]), (2, 3))
    >>> output_mask(rows, None)
    tensor([1., 0.])
    >>> output_mask(rows, Mask.dense((2,))) is None
    True
    """
    if weight is None or len(weight.shape) != 2 or tuple(weight.keep.shape) != (weight.shape[0], 1):
        return None
    row = weight.keep.reshape(-1)
    if bias is not None and not torch.equal(bias.broadcastable().expand(bias.shape), row):
        return None
    return row.to(torch.float32)

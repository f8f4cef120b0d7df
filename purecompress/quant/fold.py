"""Conv-BN folding: pattern discovery with ``torch.fx`` and the folding math as pure functions.

``W' = W * gamma / sigma`` and ``b' = beta + (b - mu) * gamma / sigma`` with
``sigma = sqrt(running_var + eps)`` (NNI's formulas and operation order). :func:`folded_call`
evaluates a model with every found pair folded: the conv gets ``W'`` (and ``b'`` when it has a
bias), the BatchNorm becomes an identity (plus ``b'`` when the conv has no bias) through hooks
that exist only inside the call.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.fx
from torch import Tensor, nn

from purecompress.transform import Params

__all__ = ["find_conv_bn", "fold_conv_bn", "fold_params", "folded_call"]


def find_conv_bn(model: nn.Module) -> dict[str, str]:
    """Conv2d modules whose output feeds only a BatchNorm2d: ``{conv name: bn name}``.

    Traces ``model`` with ``torch.fx.symbolic_trace`` (no inputs needed). Unlike NNI, a conv whose
    output is also used elsewhere is not paired (folding would change that other use).

    >>> m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 1))
    >>> find_conv_bn(m)
    {'0': '1'}
    """
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception as err:  # fx raises many types for untraceable code
        raise ValueError(f"cannot trace {type(model).__name__} with torch.fx to find Conv-BN pairs: {err}") from err
    modules = dict(model.named_modules())
    pairs = {}
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), nn.BatchNorm2d):
            continue
        src = node.args[0] if node.args else None
        if (isinstance(src, torch.fx.Node) and src.op == "call_module"
                and isinstance(modules.get(src.target), nn.Conv2d) and len(src.users) == 1):
            pairs[str(src.target)] = str(node.target)
    return pairs


def fold_conv_bn(weight: Tensor, bias: Tensor | None, bn_weight: Tensor | None, bn_bias: Tensor | None,
                 running_mean: Tensor, running_var: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """Folded ``(weight [O, I, kh, kw], bias [O])`` of a conv followed by an eval-mode BatchNorm.

    Differentiable in every tensor argument (QAT folds while training). ``bn_weight`` /
    ``bn_bias`` None (a BatchNorm without affine parameters) mean ``gamma = 1`` / ``beta = 0``.

    >>> w, b = fold_conv_bn(torch.ones(1, 1, 1, 1), None, torch.tensor([2.]), torch.tensor([1.]),
    ...                     torch.tensor([3.]), torch.tensor([4.]), 0.0)
    >>> w.flatten().item(), b.item()
    (1.0, -2.0)
    """
    sigma = torch.sqrt(running_var + eps)
    if bn_weight is None:
        bn_weight = torch.ones_like(sigma)
    if bn_bias is None:
        bn_bias = torch.zeros_like(sigma)
    shape = [-1] + [1] * (weight.dim() - 1)
    new_weight = weight * bn_weight.reshape(shape) / sigma.reshape(shape)
    if bias is None:
        new_bias = bn_bias - running_mean / sigma * bn_weight
    else:
        new_bias = bn_bias + (bias - running_mean) / sigma * bn_weight
    return new_weight, new_bias


def fold_params(model: nn.Module, params: Params, pairs: Mapping[str, str]) -> tuple[Params, dict[str, Tensor]]:
    """Folded params and the bias each bypassed BatchNorm must add.

    Returns:
        ``(new_params, extra_bias)``: ``new_params`` has each paired conv's weight (and bias, when
        the conv has one) folded; ``extra_bias[bn name]`` is ``b'`` for convs without a bias
        (to add after the conv), else zeros are not needed and the entry is absent.
    """
    out = dict(params)
    extra: dict[str, Tensor] = {}

    def get(name: str) -> Tensor | None:
        if name in params:
            return params[name]
        module, _, attr = name.rpartition(".")
        return getattr(model.get_submodule(module), attr)

    for conv, bn in pairs.items():
        bn_module = model.get_submodule(bn)
        w, b = fold_conv_bn(get(f"{conv}.weight"), get(f"{conv}.bias"), get(f"{bn}.weight"), get(f"{bn}.bias"),
                            get(f"{bn}.running_mean"), get(f"{bn}.running_var"), bn_module.eps)
        out[f"{conv}.weight"] = w
        if get(f"{conv}.bias") is None:
            extra[bn] = b
        else:
            out[f"{conv}.bias"] = b
    return out, extra


def folded_call(model: nn.Module, params: Params, pairs: Mapping[str, str], args: Any = (),
                kwargs: Mapping[str, Any] | None = None) -> Any:
    """Run ``model`` (eval semantics for the folded BNs) with each Conv-BN pair folded."""
    args = args if isinstance(args, tuple) else (args,)
    new_params, extra = fold_params(model, params, pairs)

    def bypass(bias: Tensor | None) -> Any:
        def hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> Tensor:
            x = inputs[0]
            return x if bias is None else x + bias.reshape(1, -1, *([1] * (x.dim() - 2)))
        return hook

    handles = []
    try:
        for bn in pairs.values():
            handles.append(model.get_submodule(bn).register_forward_hook(bypass(extra.get(bn))))
        return torch.func.functional_call(model, new_params, args, dict(kwargs or {}))
    finally:
        for handle in handles:
            handle.remove()

"""The op table: what kind of op each node of a captured graph is.

:func:`kind_of` gives a node a kind (``'elementwise'``, ``'batchnorm'``, ``'spatial'``,
``'index'``, ``'reduce'``, ...) from its function or method name, or from its module's class names
along the MRO; modules in the replacement table (:mod:`~purecompress.graph.replace`) take their
kind from their entry. :mod:`~purecompress.graph.liveness` and :mod:`~purecompress.graph.channels`
read the kind to decide how values and channels flow through the op, and :data:`FIRST_ONLY` names
the element-wise ops whose later tensor arguments carry no data.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch.fx as fx
from torch import nn

from .replace import Replacement, replacement_for

__all__ = ["FIRST_ONLY", "kind_of", "op_name"]


def _table(kind: str, names: str) -> dict[str, str]:
    return dict.fromkeys(names.split(), kind)


# Keys: function __name__, method name, or a module class name along the MRO.
_KINDS: dict[str, str] = {
    **_table("elementwise", """
        relu relu_ relu6 leaky_relu leaky_relu_ elu elu_ selu celu gelu silu mish hardtanh
        hardtanh_ hardswish hardsigmoid sigmoid sigmoid_ tanh tanh_ softplus softsign logsigmoid
        rrelu threshold abs neg exp log sqrt rsqrt square pow clamp clamp_ clip sign reciprocal
        contiguous clone detach float half double to type_as dropout dropout1d dropout2d dropout3d
        alpha_dropout feature_alpha_dropout add add_ iadd radd sub sub_ isub rsub subtract mul
        mul_ imul multiply div div_ itruediv truediv divide true_divide floordiv floor_divide
        addcmul addcdiv maximum minimum where gt lt ge le eq ne sin cos erf
        ReLU ReLU6 LeakyReLU ELU SELU CELU GELU SiLU Mish Hardtanh Hardswish Hardsigmoid
        Sigmoid Tanh Softplus Softsign LogSigmoid RReLU Threshold Identity _DropoutNd AlphaDropout
        Tanhshrink Softshrink Hardshrink PReLU
    """),
    **_table("batchnorm", "_BatchNorm batch_norm"),
    **_table("instancenorm", "_InstanceNorm instance_norm"),
    **_table("groupnorm", "GroupNorm group_norm"),
    **_table("layernorm", "LayerNorm layer_norm RMSNorm rms_norm"),
    **_table("softmax", "softmax log_softmax softmin normalize Softmax LogSoftmax Softmin"),
    **_table("spatial", """
        max_pool1d max_pool2d max_pool3d avg_pool1d avg_pool2d avg_pool3d adaptive_avg_pool1d
        adaptive_avg_pool2d adaptive_avg_pool3d adaptive_max_pool1d adaptive_max_pool2d
        adaptive_max_pool3d interpolate upsample pad _MaxPoolNd _AvgPoolNd _AdaptiveAvgPoolNd
        _AdaptiveMaxPoolNd Upsample _ConstantPadNd _ReflectionPadNd _ReplicationPadNd
        _CircularPadNd
    """),
    **_table("index", """
        view reshape flatten unflatten squeeze unsqueeze permute transpose t movedim expand
        expand_as repeat getitem split chunk unbind narrow select flip roll pixel_shuffle
        pixel_unshuffle Flatten Unflatten PixelShuffle PixelUnshuffle cat concat concatenate stack
    """),
    **_table("reduce", "mean sum amax amin nansum nanmean logsumexp"),
    **_table("functional_layer", "linear conv1d conv2d conv3d conv_transpose1d conv_transpose2d"),
}  # fmt: skip
#: Element-wise ops whose later tensor arguments give only a dtype or device (no data).
FIRST_ONLY = {"type_as", "to"}


def kind_of(
    node: fx.Node, modules: Mapping[str, nn.Module], extra: Mapping[type[nn.Module], Replacement] | None = None
) -> str:
    """The op kind of ``node``: a key of the table above, ``'producer'``, ``'channelwise'``,
    ``'unknown'``, or the node's op for placeholders, get_attr and output."""
    if node.op in ("placeholder", "get_attr", "output"):
        return node.op
    if node.op == "call_module":
        module = modules[str(node.target)]
        names = [cls.__name__ for cls in type(module).__mro__]
        named = next((_KINDS[n] for n in names if n in _KINDS), None)
        if named in ("batchnorm", "instancenorm", "groupnorm"):
            return named
        entry = replacement_for(module, extra)
        if entry is not None:
            return entry.kind
    else:
        names = [op_name(node)]
    return next((_KINDS[n] for n in names if n in _KINDS), "unknown")


def op_name(node: fx.Node) -> str:
    """Function or method name of a call node."""
    return str(node.target) if node.op == "call_method" else getattr(node.target, "__name__", "")

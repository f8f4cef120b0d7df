"""Calibration as a function over a sequence of blocks: compress a decoder one block at a time.

``compress_sequential`` runs the model's first part once to capture what enters the first block,
then for each block: runs it (with temporary hooks, removed before it returns) to collect what
its Linear layers need from their inputs (:class:`LinearStats`), asks a compressor for new
weights, and runs the *compressed* block to make the next block's inputs. It holds the model plus
one block's inputs and statistics at a time, never every layer's activations. The caller's model
and tensors are never written: results are new params, masks and quantization parameters.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal

import attrs
import torch
from torch import Tensor, nn
from torch.func import functional_call
from tqdm.auto import tqdm

import purecompress as pc
import purecompress.quant as pq

__all__ = ["BlockResult", "LinearStats", "SequentialResult", "compress_sequential", "linear_stats"]

logger = logging.getLogger(__name__)

Need = Literal["norms", "hessian"]


@attrs.frozen
class LinearStats:
    """What one Linear layer's inputs say about it, accumulated in float32 over calibration tokens.

    Attributes:
        sq_norm: ``[in]``, the sum over tokens of each input feature squared (Wanda's
            ``||X_j||_2^2``).
        hessian: ``[in, in]``, ``X^T X`` summed over tokens (SparseGPT/GPTQ), or None when not asked.
        count: tokens seen.
    """

    sq_norm: Tensor
    hessian: Tensor | None
    count: int


@attrs.frozen
class BlockResult:
    """What a compressor returns for one block.

    Attributes:
        weights: full parameter name -> new weight (model dtype); missing names stay as they were.
        masks: full parameter name -> mask, for pruning compressors.
        qparams: full parameter name -> quantization parameters, for quantizing compressors.
    """

    weights: Mapping[str, Tensor] = attrs.field(factory=dict)
    masks: Mapping[str, pc.Mask] = attrs.field(factory=dict)
    qparams: Mapping[str, pq.QuantParams] = attrs.field(factory=dict)


@attrs.frozen
class SequentialResult:
    """The outcome of :func:`compress_sequential`.

    Attributes:
        params: the model's params with the compressed weights swapped in (others shared).
        masks: parameter name -> mask (empty when quantizing).
        qparams: parameter name -> :class:`~purecompress.quant.QuantParams` (empty when pruning).
        peak_bytes: the most bytes of activations and statistics held at once (block inputs,
            one batch's output, the block's statistics): one block's worth, whatever the depth.
    """

    params: pc.Params
    masks: pc.Masks
    qparams: dict[str, pq.QuantParams]
    peak_bytes: int


Compressor = Callable[[Mapping[str, Tensor], Mapping[str, LinearStats]], BlockResult]


class _Captured(Exception):
    """Raised by the hook on the first block once its inputs are captured."""


def _as_args(batch: Any) -> tuple[Any, ...]:
    return batch if isinstance(batch, tuple) else (batch,)


def _bytes(obj: Any) -> int:
    if isinstance(obj, Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, (tuple, list)):
        return sum(_bytes(o) for o in obj)
    if isinstance(obj, Mapping):
        return sum(_bytes(o) for o in obj.values())
    return 0


# Hugging Face decoder layers get the model's key/value cache as a keyword argument (``cache`` in
# transformers 5, ``past_key_value(s)``/``layer_past`` before) and append to it at every call; the
# blocks run more than once here (statistics, then outputs), so the cache is dropped.
_CACHE_KWARGS = ("cache", "past_key_value", "past_key_values", "layer_past")


def _is_cache(name: str, value: Any) -> bool:
    return name in _CACHE_KWARGS or type(value).__name__.endswith("Cache")


def _without_cache(kwargs: dict[str, Any]) -> dict[str, Any]:
    out = {k: (None if _is_cache(k, v) else v) for k, v in kwargs.items()}
    if "use_cache" in out:
        out["use_cache"] = False
    return out


def _capture_inputs(model: nn.Module, params: pc.Params, first: nn.Module,
                    batches: Iterable[Any]) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
    """The ``(args, kwargs)`` each batch brings to the first block (the rest of the model is not run)."""
    captured: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        del module
        captured.append((args, _without_cache(kwargs)))
        raise _Captured

    handle = first.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for batch in batches:
            try:
                functional_call(model, params, _as_args(batch))
            except _Captured:
                continue
            raise ValueError("the model's forward never reached its first block")
    finally:
        handle.remove()
    return captured


def _block_params(params: pc.Params, prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}


def linear_stats(model: nn.Module, params: pc.Params, inputs: Iterable[Any], names: Sequence[str], *,
                 need: Need = "hessian") -> dict[str, LinearStats]:
    """Statistics of the inputs of the Linear modules ``names`` while ``model`` runs on ``inputs``.

    Args:
        model: the module to run (a block, or a whole model).
        params: its params (``functional_call``).
        inputs: batches (a tensor or a tuple of args each).
        names: Linear module names inside ``model``.
        need: ``'norms'`` (squared input norms only) or ``'hessian'`` (also ``X^T X``).

    Returns:
        module name -> :class:`LinearStats` (float32, on the inputs' device).

    >>> lin = nn.Linear(3, 2)
    >>> s = linear_stats(lin, pc.params_of(lin), [torch.ones(4, 3)], [''])['']
    >>> s.sq_norm, s.hessian[0], s.count
    (tensor([4., 4., 4.]), tensor([4., 4., 4.]), 4)
    """
    return _collect(model, params, ((_as_args(b), {}) for b in inputs), names, need)


def _collect(model: nn.Module, params: Mapping[str, Tensor], calls: Iterable[tuple[tuple[Any, ...], dict[str, Any]]],
             names: Sequence[str], need: Need) -> dict[str, LinearStats]:
    """:func:`linear_stats` over ``(args, kwargs)`` calls."""
    modules = dict(model.named_modules())
    acc: dict[str, list[Any]] = {}

    def make_hook(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Tensor, ...]) -> None:
            del module
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
            if name not in acc:
                acc[name] = [torch.zeros(x.shape[1], device=x.device),
                             torch.zeros(x.shape[1], x.shape[1], device=x.device) if need == "hessian" else None, 0]
            entry = acc[name]
            entry[0] += x.pow(2).sum(0)
            if entry[1] is not None:
                entry[1].addmm_(x.T, x)
            entry[2] += x.shape[0]
        return hook

    handles = []
    try:
        for name in names:
            if not isinstance(modules[name], nn.Linear):
                raise TypeError(f"{name!r} is a {type(modules[name]).__name__}, not a Linear")
            handles.append(modules[name].register_forward_pre_hook(make_hook(name)))
        with torch.no_grad():
            for args, kwargs in calls:
                functional_call(model, dict(params), args, kwargs)
    finally:
        for handle in handles:
            handle.remove()
    return {name: LinearStats(*acc[name]) for name in names if name in acc}


def _linears(block: nn.Module) -> list[str]:
    return [name for name, module in block.named_modules() if isinstance(module, nn.Linear)]


def compress_sequential(
    model: nn.Module,
    batches: Sequence[Any],
    compress: Compressor,
    *,
    blocks: Sequence[str],
    params: pc.Params | None = None,
    need: Need = "hessian",
    progress: bool | None = None,
) -> SequentialResult:
    """Compress the Linear layers of ``blocks`` one block at a time, feeding compressed outputs on.

    Args:
        model: a model whose forward runs ``blocks`` in order, each taking the hidden states
            ``[batch, seq, dim]`` as its first argument and returning them (or a tuple starting
            with them).
        batches: calibration batches (each a tensor or a tuple of the model's args).
        compress: ``(weights, stats) -> BlockResult``: ``weights`` are the block's Linear weights
            (full parameter names), ``stats`` their :class:`LinearStats` (same names).
        blocks: module names of the repeated blocks, in order (see :func:`decoder_blocks`).
        params: run with these instead of the model's own (never written).
        need: what to collect (``'norms'`` for Wanda, ``'hessian'`` for SparseGPT/GPTQ).
        progress: tqdm bar over the blocks; default on only when stderr is a terminal.

    Returns:
        :class:`SequentialResult`.
    """
    params = dict(pc.params_of(model) if params is None else params)
    modules = dict(model.named_modules())
    missing = [b for b in blocks if b not in modules]
    if missing or not blocks:
        raise ValueError(f"blocks {missing or list(blocks)} are not modules of the model")
    masks: pc.Masks = {}
    qparams: dict[str, pq.QuantParams] = {}
    peak = 0
    with torch.no_grad():
        inputs = _capture_inputs(model, params, modules[blocks[0]], batches)
        bar = tqdm(blocks, desc="blocks", disable=not (sys.stderr.isatty() if progress is None else progress))
        for name in bar:
            block = modules[name]
            prefix = f"{name}."
            linears = _linears(block)
            stats = _collect(block, _block_params(params, prefix), inputs, linears, need)
            held = _bytes([a for a, _ in inputs]) + _bytes([s.sq_norm for s in stats.values()]) \
                + _bytes([s.hessian for s in stats.values() if s.hessian is not None])
            weights = {f"{prefix}{lin}.weight": params[f"{prefix}{lin}.weight"] for lin in linears}
            result = compress(weights, {f"{prefix}{lin}.weight": s for lin, s in stats.items()})
            del stats
            params.update(result.weights)
            masks.update(result.masks)
            qparams.update(result.qparams)
            block_params = _block_params(params, prefix)
            out_bytes = 0
            for i, (args, kwargs) in enumerate(inputs):
                out = functional_call(block, block_params, args, kwargs)
                hidden = out[0] if isinstance(out, tuple) else out
                out_bytes = max(out_bytes, _bytes(hidden))
                inputs[i] = ((hidden, *args[1:]), kwargs)
            peak = max(peak, held + out_bytes)
            logger.debug("compressed %s (%d Linear layers)", name, len(linears))
    return SequentialResult(params, masks, qparams, peak)

"""Quantization as a transform: ``init`` / ``update`` / ``quantized_call`` over a params dict.

A :class:`QuantTransform` is the static part (which modules, which tensor kinds, how: a
*kernel* per algorithm); a :class:`QuantState` record is the dynamic part (step counter and, per
quantized tensor, the observed :class:`~purecompress.quant.observers.Range` and the last
:class:`~purecompress.quant.qparams.QuantParams`). :func:`quantized_call` runs the model through
``torch.func.functional_call`` with fake-quantized weights and, for configured modules,
fake-quantized inputs (first positional argument) and outputs. Activation quantization runs in
the model's forward traced once by ``torch.fx`` with quantization nodes around the selected
modules (:mod:`purecompress.quant._sites`): no hook is put on the user's modules, concurrent calls
from several threads give each its own result, and a compiled training step is one graph. Where
fx cannot trace the forward it falls back to forward hooks that exist only inside the call (one
call at a time). It returns ``(output, new_state)``; the model, the params and the state passed
in are never modified.

State keys are ``'<module>.weight'``, ``'<module>.input'``, ``'<module>.output'``. A tied weight
(GPT-2's ``lm_head.weight`` is ``transformer.wte.weight``, :func:`~purecompress.tied_params`) has
one quantizer under its params key, whichever of its modules selected it, and the fake-quantized
tensor reaches every use (``functional_call`` ties it); :func:`quant_report` names the other names.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, Protocol

import attrs
import torch
from torch import Tensor, nn

from purecompress._pytree import is_traced, record
from purecompress.quant._sites import SiteGraph
from purecompress.quant.config import QuantConfig, TensorSpec
from purecompress.quant.observers import Histogram, Range
from purecompress.quant.qparams import QuantParams
from purecompress.selectors import ConfigError, Plan, select
from purecompress.transform import Params

__all__ = ["Kernel", "KernelContext", "QuantReport", "QuantState", "QuantTransform", "QuantedTensor", "TensorState",
           "quant_report", "quantized_call"]


@record
class TensorState:
    """What is known about one quantized tensor.

    Attributes:
        range: the observed/tracked range (activations, calibration), or None.
        qparams: the scale/zero point last used (eval mode and export use these), or None.
        histogram: the running histogram of a histogram-estimating observer, or None.
    """

    range: Range | None = None
    qparams: QuantParams | None = None
    histogram: Histogram | None = None


@record
class QuantState:
    """The dynamic state of a quantization transform.

    Attributes:
        step: int64 ``[]``, starts at 1 and is advanced by ``update`` after each optimizer step
            (NNI's ``steps`` buffer).
        tensors: ``'<module>.<weight|input|output>'`` -> :class:`TensorState`.
    """

    step: Tensor
    tensors: dict[str, TensorState]


class KernelContext(NamedTuple):
    """Everything a kernel may read besides the tensor itself (a NamedTuple: cheap under torch.compile).

    Attributes:
        key: ``'<module>.<kind>'``.
        kind: 'weight', 'input' or 'output'.
        spec: the tensor's bits/dtype/scheme.
        step: the state's step (a tensor: compare it with tensor ops, never ``.item()``).
        first: whether this is the first step (``step == 1``): a bool in eager calls, a bool tensor
            when traced (``torch.compile``, ``torch.func`` transforms).
        start_step: the config's ``quant_start_step`` (static).
        training: observe and update (True) or use the stored parameters (False).
        params: the params dict of the call (LSQ reads its learnable scales from it).
    """

    key: str
    kind: str
    spec: TensorSpec
    step: Tensor
    first: Tensor | bool
    start_step: int
    training: bool
    params: Mapping[str, Tensor]

    @property
    def axis(self) -> int | None:
        """Per-channel axis: 0 for weights, 1 for activations; None per tensor."""
        if not self.spec.per_channel:
            return None
        return 0 if self.kind == "weight" else 1


class Kernel(Protocol):
    """How an algorithm quantizes one tensor: ``(x, previous state, ctx) -> (x_q, new state)``."""

    def __call__(self, x: Tensor, prev: TensorState | None, ctx: KernelContext) -> tuple[Tensor, TensorState | None]:
        """Quantize ``x`` given its previous state; return the result and the new state (None: drop it)."""
        ...


@attrs.frozen
class QuantTransform:
    """A quantization algorithm bound to a model's selected modules.

    Attributes:
        plan: the selected modules and their :class:`QuantConfig`.
        kernel: the algorithm's per-tensor function.
        init_tensor: optional ``(key, weight, spec) -> TensorState`` for weights at ``init``.
        name: algorithm name, for messages.
        sites: the model's forward traced with input/output quantization nodes (built by the
            algorithm factories for the model they are given; None: temporary hooks).
    """

    plan: Plan[QuantConfig]
    kernel: Kernel
    init_tensor: Callable[[str, Tensor, TensorSpec], TensorState | None] | None = None
    name: str = "quantization"
    sites: SiteGraph | None = attrs.field(default=None, eq=False, repr=False)

    @property
    def keys(self) -> tuple[str, ...]:
        """All quantized tensor keys, in module order (a tied weight once, under its params key)."""
        keys = [(e.key("weight") if t == "weight" else None) or f"{e.module}.{t}"
                for e in self.plan for t in e.config.quant_types]
        return tuple(dict.fromkeys(keys))

    @property
    def tied(self) -> dict[str, tuple[str, ...]]:
        """Quantized weight key -> the other names of that one tensor (each use is quantized)."""
        keys = set(self.keys)
        return {key: names for key, names in self.plan.aliases().items() if key in keys}

    def init(self, params: Params) -> QuantState:
        """The initial state (step 1); weights may get parameters from their current values."""
        tensors = {}
        for entry in self.plan:
            spec = entry.config.specs.get("weight")
            key = entry.key("weight") or f"{entry.module}.weight"
            if spec is not None and self.init_tensor is not None and key in params and key not in tensors:
                state = self.init_tensor(key, params[key].detach(), spec)
                if state is not None:
                    tensors[key] = state
        return QuantState(torch.tensor(1, dtype=torch.int64), tensors)

    def update(self, params: Params, state: QuantState, **aux: Any) -> tuple[Params, QuantState]:
        """Advance the step (call after each optimizer step, like NNI's patched ``step``).

        The :class:`~purecompress.transform.Stateful` shape: ``params`` come back unchanged (the
        same dict), ``aux`` is accepted and ignored; only the step advances.
        """
        del aux
        return params, QuantState(state.step + 1, state.tensors)

    def __call__(self, model: nn.Module, params: Params, state: QuantState, args: Any = (),
                 kwargs: Mapping[str, Any] | None = None, *, training: bool = True) -> tuple[Any, QuantState]:
        """Same as :func:`quantized_call` with this transform."""
        return quantized_call(self, model, params, state, args, kwargs, training=training)


def build(model: nn.Module, configs: Sequence[QuantConfig], kernel: Kernel, *, name: str,
          init_tensor: Callable[[str, Tensor, TensorSpec], TensorState | None] | None = None,
          warn: bool = True) -> QuantTransform:
    """Select ``configs`` on ``model`` and bind ``kernel`` (used by the algorithm factories)."""
    plan = select(model, configs, warn=warn)
    for entry in plan:
        if "weight" in entry.config.specs and entry.key("weight") is None:
            raise ConfigError(entry.index, "quant_types", f"{name}: module {entry.module!r} ({entry.type_name}) has "
                              "no weight to quantize; drop 'weight' from quant_types for it, or select "
                              "weighted modules only")
    sites = {e.module: ("input" in e.config.specs, "output" in e.config.specs) for e in plan}
    sites = {module: flags for module, flags in sites.items() if any(flags)}
    return QuantTransform(plan, kernel, init_tensor, name, SiteGraph(model, sites) if sites else None)


def quantized_call(
    q: QuantTransform,
    model: nn.Module,
    params: Params,
    state: QuantState,
    args: Any = (),
    kwargs: Mapping[str, Any] | None = None,
    *,
    training: bool = True,
) -> tuple[Any, QuantState]:
    """Run ``model`` with quantization; return ``(output, new_state)``.

    Args:
        q: the transform.
        model: the module (only read; its own train/eval mode is the caller's business: as with
            any ``functional_call``, a BatchNorm in training mode updates the running-stat
            tensors given in ``params`` in place).
        params: full parameter names -> tensors (missing ones come from the module); extra keys
            (e.g. LSQ's ``'<module>.weight_scale'``) are read by kernels, not passed to the model.
        state: the current :class:`QuantState`.
        args: positional inputs (a tensor or a tuple).
        kwargs: keyword inputs.
        training: observe and update ranges (True), or quantize with the stored parameters.
    """
    args = args if isinstance(args, tuple) else (args,)
    new: dict[str, TensorState | None] = {}
    first = state.step == 1
    if first.is_cpu and not is_traced(first):  # one host read per call instead of a select per tensor
        first = bool(first)

    def run(x: Tensor, key: str, kind: str, config: QuantConfig) -> Tensor:
        prev = new[key] if key in new else state.tensors.get(key)
        if x.numel() == 0:  # an empty batch has no range to observe and nothing to quantize
            return x
        ctx = KernelContext(key, kind, config.specs[kind], state.step, first, config.start_step, training, params)
        out, new[key] = q.kernel(x, prev, ctx)
        return out

    names = {n for n, _ in model.named_parameters()} | {n for n, _ in model.named_buffers()}
    call_params = {k: v for k, v in params.items() if k in names}
    specs: dict[str, tuple[str, QuantConfig]] = {}
    for entry in q.plan:
        config = entry.config
        wkey = entry.key("weight") or f"{entry.module}.weight"
        if "weight" in config.specs and wkey not in new:  # a tied weight: one quantizer, every use
            weight = params[wkey] if wkey in params else model.get_submodule(entry.module).get_parameter("weight")
            call_params[wkey] = run(weight, wkey, "weight", config)
        for kind in ("input", "output"):
            if kind in config.specs:
                specs[f"{entry.module}.{kind}"] = (kind, config)
    kwargs = dict(kwargs or {})
    graph = q.sites.lookup(model, len(args), tuple(kwargs)) if q.sites is not None and specs else None
    if graph is not None:
        def site(x: Any, key: str) -> Tensor:
            kind, config = specs[key]
            if not isinstance(x, Tensor):
                raise TypeError(f"{key}: {_NOT_A_TENSOR[kind]}")
            return run(x, key, kind, config)

        inputs = {k: v for k, v in call_params.items() if k in graph.names}
        with _serial(graph.lock):
            out = torch.func.functional_call(graph.gm, inputs, (site, *args), kwargs)
    elif not specs:  # weights only: no hooks to install (installing breaks a compiled graph)
        with _serial(_HOOK_LOCK):  # functional_call swaps the user's module tensors
            out = torch.func.functional_call(model, call_params, args, kwargs)
    else:
        hooks: list[tuple[nn.Module, str, Callable[..., Any]]] = []
        for key, (kind, config) in specs.items():
            module = model.get_submodule(key.rpartition(".")[0])
            hooks.append((module, "pre" if kind == "input" else "post",
                          (_input_hook if kind == "input" else _output_hook)(run, key, config)))
        out = _hooked_call(model, call_params, args, kwargs, hooks)
    tensors = dict(state.tensors)
    for key, value in new.items():
        if value is None:
            tensors.pop(key, None)
        else:
            tensors[key] = value
    return out, QuantState(state.step, tensors)


@attrs.frozen
class QuantedTensor:
    """One quantized tensor of a transform.

    Attributes:
        key: the state key (a weight's params key).
        kind: 'weight', 'input' or 'output'.
        bits: bit width.
        scheme: quantization scheme.
        tied: the tensor's other names (a tied weight: every use is quantized), else ``()``.
        calibrated: whether the state holds quantization parameters for it.
    """

    key: str
    kind: str
    bits: int
    scheme: str
    tied: tuple[str, ...]
    calibrated: bool


@attrs.frozen
class QuantReport:
    """Attributes: tensors (one :class:`QuantedTensor` per quantized tensor, module order)."""

    tensors: tuple[QuantedTensor, ...]

    def table(self) -> str:
        """A plain-text table, one row per tensor; a tied weight's row names its other names."""
        names = [" = ".join((t.key, *t.tied)) for t in self.tensors]
        width = max([len(n) for n in names] + [6])
        rows = [f"{'tensor':<{width}}  bits  {'scheme':<24}  calibrated"]
        rows += [f"{n:<{width}}  {t.bits:>4}  {t.scheme:<24}  {'yes' if t.calibrated else 'no'}"
                 for n, t in zip(names, self.tensors)]
        return "\n".join(rows)


def quant_report(q: QuantTransform, state: QuantState | None = None) -> QuantReport:
    """What ``q`` quantizes (and, given a state, which tensors have parameters yet).

    >>> import torch
    >>> from purecompress.quant import qat
    >>> emb, head = torch.nn.Embedding(5, 4), torch.nn.Linear(4, 5, bias=False)
    >>> head.weight = emb.weight
    >>> q = qat(torch.nn.ModuleDict({'emb': emb, 'head': head}),
    ...         [{'quant_types': ['weight'], 'quant_bits': 8, 'op_names': ['head']}])
    >>> print(quant_report(q).table())
    tensor                    bits  scheme                    calibrated
    emb.weight = head.weight     8  per_tensor_affine         no
    """
    tied = q.tied
    done = set()
    rows = []
    for entry in q.plan:
        for kind in entry.config.quant_types:
            key = (entry.key("weight") if kind == "weight" else None) or f"{entry.module}.{kind}"
            if key in done:
                continue
            done.add(key)
            spec = entry.config.specs[kind]
            known = state is not None and key in state.tensors and state.tensors[key].qparams is not None
            rows.append(QuantedTensor(key, kind, spec.bits, spec.scheme, tied.get(key, ()) if kind == "weight" else (),
                                      known))
    return QuantReport(tuple(rows))


_NOT_A_TENSOR = {"input": "input quantization needs a tensor as the first positional input",
                 "output": "output quantization needs a module that returns one tensor"}

#: The hook path puts hooks on the caller's modules and ``functional_call`` swaps their tensors:
#: one such call at a time in eager mode.
_HOOK_LOCK = threading.RLock()


def _hooked_call(model: nn.Module, call_params: dict[str, Tensor], args: tuple[Any, ...], kwargs: dict[str, Any],
                 hooks: list[tuple[nn.Module, str, Callable[..., Any]]]) -> Any:
    with _serial(_HOOK_LOCK):
        handles = _install(hooks)
        try:
            return torch.func.functional_call(model, call_params, args, kwargs)
        finally:
            _remove(handles)


def _serial(lock: threading.RLock) -> contextlib.AbstractContextManager[Any]:
    """``lock`` in eager calls; nothing inside a compiled region (a lock cannot be traced, and the
    compiled graph swaps no module tensors at run time)."""
    return contextlib.nullcontext() if torch.compiler.is_compiling() else lock


@torch.compiler.disable
def _install(hooks: list[tuple[nn.Module, str, Callable[..., Any]]]) -> list[Any]:
    """Register the temporary hooks (outside any torch.compile graph: registration would break it
    once per hook; this way a compiled caller gets one graph for the whole forward)."""
    handles = []
    try:
        for module, kind, hook in hooks:
            register = module.register_forward_pre_hook if kind == "pre" else module.register_forward_hook
            handles.append(register(hook))
    except BaseException:
        _remove(handles)
        raise
    return handles


@torch.compiler.disable
def _remove(handles: list[Any]) -> None:
    for handle in handles:
        handle.remove()


def _input_hook(run: Callable[..., Tensor], key: str, config: QuantConfig) -> Callable[..., Any]:
    def hook(module: nn.Module, inputs: tuple[Any, ...]) -> tuple[Any, ...]:
        if not inputs or not isinstance(inputs[0], Tensor):
            raise TypeError(f"{key}: {_NOT_A_TENSOR['input']}")
        return (run(inputs[0], key, "input", config), *inputs[1:])

    return hook


def _output_hook(run: Callable[..., Tensor], key: str, config: QuantConfig) -> Callable[..., Any]:
    def hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> Tensor:
        if not isinstance(output, Tensor):
            raise TypeError(f"{key}: {_NOT_A_TENSOR['output']}")
        return run(output, key, "output", config)

    return hook

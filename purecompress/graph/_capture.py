"""Capture a model's forward as a ``torch.fx`` graph that knows every tensor's shape.

Two methods build the same kind of graph (``call_module`` nodes for the layers, ``call_function``
and ``call_method`` nodes for the ops between them, ``get_attr`` for parameters and constants):

- ``"fx"`` traces symbolically with a :class:`torch.fx.Tracer` whose leaves are torch's own
  modules, every subclass of the channel-producing layers (:data:`PRODUCER_TYPES`), every subclass
  of a channel-wise norm (:data:`NORM_TYPES`) whose submodules act element-wise, the foreign
  layers the graph code knows (Hugging Face's GPT-2 ``Conv1D``) and the modules the caller names.
  It fails on forwards that need real values (``int()`` of a size, slicing with a computed size,
  data-dependent control flow).
- ``"record"`` runs the forward once on the example inputs under a
  :class:`torch.overrides.TorchFunctionMode` and writes down every torch op of that real run; hooks
  on the same leaf modules make them single ``call_module`` nodes. Python values computed on the
  way (sizes, ``int()``, branches, non-tensor inputs) are the run's own, so the graph holds for
  inputs of the example's shapes; :class:`CaptureInfo` lists where data became such a value. The
  ops of a ``torch.jit.script`` submodule are recorded one by one (``torch.ops.aten`` calls). A
  :class:`torch.utils._python_dispatch.TorchDispatchMode` watches for ATen ops that run outside
  torch's Python API (a C++ extension calling ATen): a tensor they make that reaches the graph is
  an op the recording cannot follow, and capture says so.
- ``"auto"`` (the default) tries ``"fx"`` and records when it fails, logging why.

Either way the graph is then run once on the example inputs to record ``node.meta["tensor_meta"]``
(the same record as fx's ``ShapeProp``); a recorded graph must also reproduce the forward's output.
The model is not changed: the runs happen in eval mode under ``no_grad`` (each module's ``training``
flag is restored afterwards), on clones of the inputs, with the global RNG state restored.
:func:`capture_info` says which method ran and why.
"""

from __future__ import annotations

import builtins
import contextlib
import inspect
import logging
import operator
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import attrs
import optree
import torch
import torch.fx as fx
from torch import Tensor, nn
from torch.fx.passes.shape_prop import _extract_tensor_metadata
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.weak import WeakIdKeyDictionary

from purecompress._state import state_kept

__all__ = [
    "METHODS",
    "ELEMENTWISE_MODULES",
    "NORM_TYPES",
    "PRODUCER_TYPES",
    "SIZE_ARGS",
    "CaptureInfo",
    "GraphCaptureError",
    "bind_inputs",
    "capture",
    "capture_info",
    "is_captured",
]

log = logging.getLogger("purecompress.graph")

#: Layers whose output channels a channel pruner removes; always leaves of the captured graph.
PRODUCER_TYPES: tuple[type[nn.Module], ...] = (
    nn.Conv1d, nn.Conv2d, nn.Conv3d,
    nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
    nn.Linear,
)  # fmt: skip


def is_depthwise(module: nn.Module) -> bool:
    """A depthwise conv: output channel ``i`` is computed from input channel ``i`` alone."""
    return (isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d) and module.groups > 1
            and module.groups == module.in_channels == module.out_channels)


#: torch's element-wise modules: the only submodules a :data:`NORM_TYPES` subclass may hold and
#: still be one leaf (timm's ``BatchNormAct2d`` applies its ``drop`` and ``act`` after the norm).
ELEMENTWISE_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Hardtanh,
    nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.Softsign, nn.LogSigmoid, nn.RReLU,
    nn.Threshold, nn.Tanhshrink, nn.Softshrink, nn.Hardshrink, nn.Identity, nn.modules.dropout._DropoutNd,
)  # fmt: skip

#: Channel-wise norms whose subclasses are leaves too (when their children are element-wise).
NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm, nn.GroupNorm,
)  # fmt: skip


def _is_norm_subclass(m: nn.Module) -> bool:
    """A subclass of a channel-wise norm whose submodules all act element-wise: one channel-wise leaf."""
    return isinstance(m, NORM_TYPES) and all(isinstance(c, ELEMENTWISE_MODULES) for c in m.children())


#: Layers of other libraries kept whole, by ``module.qualname`` of the class (or a base class).
_FOREIGN_LEAVES = frozenset({"transformers.pytorch_utils.Conv1D"})

#: ``node.meta`` key of a recorded graph: the int arguments of the op that equal a size the
#: forward read from a tensor before it (``x.view(-1, x.size(1))``), so they are taken as computed
#: from shapes, not written as literals (a traced graph has nodes for those).
SIZE_ARGS = "purecompress.size_args"

#: The capture methods :func:`capture` takes.
METHODS = ("auto", "fx", "record")

Method = Literal["auto", "fx", "record"]

_CAPTURED = "purecompress.captured"
_INFO = "purecompress.capture"
_TORCH_DIR = str(Path(torch.__file__).parent)
_THIS_DIR = str(Path(__file__).parent)


class GraphCaptureError(RuntimeError):
    """The model's forward could not be captured as a graph.

    Attributes:
        module: qualified name of the innermost module that failed ("" for the model's own
            forward, None when unknown).
        op: the op that failed or could not be followed (None when unknown).
    """

    def __init__(self, message: str, *, module: str | None = None, op: str | None = None) -> None:
        super().__init__(message)
        self.module = module
        self.op = op


@attrs.frozen
class CaptureInfo:
    """How a graph was captured.

    Attributes:
        method: ``"fx"`` or ``"record"``: the method that built the graph.
        reason: why that method: it was asked for, or (``"auto"``) why torch.fx failed.
        specialized: in a recorded graph, the ops where a value computed from the inputs left
            the graph as a Python value (``.item()``, ``bool()``, ``.tolist()``): the graph holds
            the value of the example run there. Each entry names the op, module and source line.
        constants: in a recorded graph, the tensors it holds as constants that are neither
            parameters nor buffers of the model, with the op and module that first used them.
    """

    method: Literal["fx", "record"]
    reason: str
    specialized: tuple[str, ...] = ()
    constants: tuple[str, ...] = ()


def _remedy(module: str | None, *, record: bool) -> str:
    leaf = f"leaf_modules=[{module!r}]" if module else "leaf_modules=[...] naming that submodule"
    excluded = f"'{module}'" if module else "the module"
    recorded = "capture by recording a run (method='record'), " if record else ""
    return (
        f"Remedies: {recorded}pass the dependency groups by hand (groups=...), exclude "
        f"{excluded} from the config, or mark the submodule that holds the failing code as a "
        f"leaf ({leaf})."
    )


def _user_frame(frames: Iterable[traceback.FrameSummary]) -> str:
    """' (at file:line: `source`)' of the innermost frame outside torch and this package."""
    user = [f for f in frames if not f.filename.startswith((_TORCH_DIR, _THIS_DIR))]
    if not user:
        return ""
    f = user[-1]
    return f" (at {Path(f.filename).name}:{f.lineno}: `{(f.line or '').strip()}`)"


def _class_names(module: nn.Module) -> set[str]:
    return {f"{cls.__module__}.{cls.__qualname__}" for cls in type(module).__mro__}


def _is_leaf(m: nn.Module, name: str, names: frozenset[str], types: tuple[type[nn.Module], ...]) -> bool:
    """The leaf rule both methods share: torch.fx's (torch's own modules but Sequential), the
    producers and their subclasses, the norm subclasses holding only element-wise modules, the
    foreign layers and the caller's leaves."""
    if name in names or isinstance(m, types + PRODUCER_TYPES) or _FOREIGN_LEAVES & _class_names(m):
        return True
    if _is_norm_subclass(m):
        return True
    return m.__module__.startswith(("torch.nn", "torch.ao.nn")) and not isinstance(m, nn.Sequential)


class _Tracer(fx.Tracer):
    """fx tracer with the shared leaves that remembers the innermost module whose forward failed."""

    def __init__(self, names: frozenset[str], types: tuple[type[nn.Module], ...]) -> None:
        super().__init__()
        self.leaf_names = names
        self.leaf_types = types
        self.failed_module: str | None = None

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return _is_leaf(m, module_qualified_name, self.leaf_names, self.leaf_types)

    def call_module(self, m: nn.Module, forward: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_module is None:  # innermost module: the first handler to run
                self.failed_module = self.path_of_module(m)
            raise


def _node_module(n: fx.Node) -> str:
    if n.op == "call_module":
        return str(n.target)
    stack = n.meta.get("nn_module_stack") or {}
    return str(next(reversed(stack.values()), ("",))[0])


class _ShapeRecorder(fx.Interpreter):
    """Runs the graph once and stores ``tensor_meta`` on every node (as fx's ShapeProp does)."""

    def __init__(self, gm: fx.GraphModule, *, remedy: bool) -> None:
        super().__init__(gm)
        self.extra_traceback = False  # our error already names the node
        self.remedy = remedy

    def run_node(self, n: fx.Node) -> Any:
        try:
            result = super().run_node(n)
        except Exception as err:
            module = _node_module(n)
            where = f"module '{module}'" if module else "the model's forward"
            raise GraphCaptureError(
                f"running op {n.format_node()} in {where} on the example inputs failed: "
                f"{type(err).__name__}: {err}. Check that example_inputs fit the model."
                + (" " + _remedy(module or None, record=True) if self.remedy else ""),
                module=module,
                op=str(n.target),
            ) from err
        if any(isinstance(x, Tensor) for x in optree.tree_leaves(result)):
            n.meta["tensor_meta"] = optree.tree_map(
                lambda x: _extract_tensor_metadata(x) if isinstance(x, Tensor) else x,
                result,
                none_is_leaf=True,
            )
        n.meta["type"] = type(result)
        return result


def _split_leaves(
    leaf_modules: Iterable[str | type[nn.Module]],
) -> tuple[frozenset[str], tuple[type[nn.Module], ...]]:
    leaves = list(leaf_modules)
    names = frozenset(x for x in leaves if isinstance(x, str))
    types = tuple(x for x in leaves if isinstance(x, type))
    if len(names) + len(types) != len(leaves):
        raise TypeError(f"leaf_modules must hold module names or module types, got {leaves!r}")
    return names, types


def bind_inputs(model: nn.Module, example_inputs: Any) -> inspect.BoundArguments:
    """Bind example inputs to ``model.forward`` (defaults not applied).

    Args:
        model: the model.
        example_inputs: a tensor (the first positional input), a tuple or list of positional
            inputs, or a dict: keyword inputs (``{"input_ids": ..., "attention_mask": ...}``), or,
            when none of its keys names a parameter of ``forward``, the single dict input of
            ``forward(self, batch)``.

    Raises:
        TypeError: the inputs do not fit ``forward``'s signature.

    >>> bind_inputs(nn.Linear(2, 3), {"input": torch.zeros(1, 2)}).arguments["input"].shape
    torch.Size([1, 2])
    """
    if isinstance(example_inputs, Tensor):
        args, kwargs = (example_inputs,), {}
    elif isinstance(example_inputs, (tuple, list)):
        args, kwargs = tuple(example_inputs), {}
    elif isinstance(example_inputs, Mapping):
        args, kwargs = (), dict(example_inputs)
    else:
        raise TypeError(
            "example_inputs must be a tensor, a tuple of positional inputs or a dict of keyword "
            f"inputs, got {type(example_inputs).__name__}"
        )
    signature = inspect.signature(model.forward)
    try:
        return signature.bind(*args, **kwargs)
    except TypeError as err:
        if kwargs and not set(kwargs) & set(signature.parameters):
            with contextlib.suppress(TypeError):
                return signature.bind(example_inputs)  # forward(self, batch: dict)
        raise TypeError(f"example_inputs do not fit {type(model).__name__}.forward{signature}: {err}") from None


def _flat_inputs(bound: inspect.BoundArguments) -> list[tuple[str, Any]]:
    """(name, value) of every input in the order a captured graph's placeholders take them:
    ``bound.args`` then ``bound.kwargs``, defaults applied (to a copy: ``bound`` is not changed)."""
    bound = inspect.BoundArguments(bound.signature, bound.arguments.copy())
    bound.apply_defaults()
    names: list[str] = []
    for name, p in bound.signature.parameters.items():
        if p.kind is p.VAR_POSITIONAL:
            names.extend(f"{name}_{i}" for i in range(len(bound.arguments.get(name, ()))))
        elif p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            names.append(name)
    names = names[: len(bound.args)]
    return [*zip(names, bound.args), *bound.kwargs.items()]


def _clone(tree: Any) -> Any:
    return optree.tree_map(lambda x: x.clone() if isinstance(x, Tensor) else x, tree, none_is_leaf=True)


@contextlib.contextmanager
def _quiet_run(model: nn.Module, devices: list[torch.device]) -> Iterator[None]:
    """Eval mode, ``no_grad`` and a forked RNG for the duration; the model's flags restored."""
    flags = [(m, m.training) for m in model.modules()]
    cuda = [d.index or 0 for d in devices if d.type == "cuda"]
    try:
        for m, _ in flags:
            m.training = False
        with torch.no_grad(), torch.random.fork_rng(devices=sorted(set(cuda))):
            yield
    finally:
        for m, training in flags:
            m.training = training


def _devices(values: Any) -> list[torch.device]:
    return [x.device for x in optree.tree_leaves(values, none_is_leaf=True) if isinstance(x, Tensor)]


def _trace(model: nn.Module, bound: inspect.BoundArguments, names: frozenset[str],
           types: tuple[type[nn.Module], ...]) -> fx.GraphModule:
    with state_kept(model):
        return _trace_kept(model, bound, names, types)


def _trace_kept(model: nn.Module, bound: inspect.BoundArguments, names: frozenset[str],
                types: tuple[type[nn.Module], ...]) -> fx.GraphModule:
    tracer = _Tracer(names, types)
    params = inspect.signature(model.forward).parameters
    concrete = {
        name: p.default for name, p in params.items() if name not in bound.arguments and p.default is not p.empty
    }
    try:
        graph = tracer.trace(model, concrete_args=concrete or None)
    except Exception as err:
        module = tracer.failed_module or ""
        where = (
            f"module '{module}' ({type(model.get_submodule(module)).__name__})"
            if module
            else (f"the forward of {type(model).__name__}")
        )
        frame = _user_frame(traceback.extract_tb(err.__traceback__))
        raise GraphCaptureError(
            f"torch.fx cannot trace {where}: {type(err).__name__}: {err}{frame}. "
            + _remedy(module or None, record=True),
            module=module,
        ) from err
    gm = fx.GraphModule(tracer.root, graph, type(model).__name__)
    inputs = _clone([v for _, v in _flat_inputs(bound)])
    with _quiet_run(model, _devices(inputs)):
        _ShapeRecorder(gm, remedy=True).run(*inputs)
    return gm


def setitem_(tensor: Tensor, index: Any, value: Any) -> Tensor:
    """``tensor[index] = value``, returning ``tensor``: a recorded graph's form of item assignment
    (the trailing underscore marks it in place, as torch names in-place ops)."""
    tensor[index] = value
    return tensor


# Tensor dunder methods as the operator functions torch.fx records for them (reflected: the
# operands swap, ``2 - x`` is ``x.__rsub__(2)``).
_OPERATORS: dict[str, tuple[Callable[..., Any], bool]] = {
    **{f"__{n}__": (getattr(operator, n), False) for n in (
        "add sub mul truediv floordiv mod pow matmul lshift rshift neg pos abs invert "
        "eq ne lt le gt ge getitem iadd isub imul itruediv ifloordiv imod ipow imatmul ilshift irshift"
    ).split()},
    **{f"__r{n}__": (getattr(operator, n), True) for n in "add sub mul truediv floordiv mod pow matmul".split()},
    "__rlshift__": (operator.lshift, True), "__rrshift__": (operator.rshift, True),
    "__div__": (operator.truediv, False), "__rdiv__": (operator.truediv, True),
    "__idiv__": (operator.itruediv, False),
    "__and__": (operator.and_, False), "__or__": (operator.or_, False), "__xor__": (operator.xor, False),
    "__rand__": (operator.and_, True), "__ror__": (operator.or_, True), "__rxor__": (operator.xor, True),
    "__iand__": (operator.iand, False), "__ior__": (operator.ior, False), "__ixor__": (operator.ixor, False),
}  # fmt: skip


def _tensor_method_names() -> dict[int, str]:
    """id of each callable attribute of ``torch.Tensor`` -> its name (a plain name over a dunder)."""
    out: dict[int, str] = {}
    for name in dir(Tensor):
        value = getattr(Tensor, name, None)
        if not callable(value) or isinstance(value, type):
            continue
        if id(value) not in out or (out[id(value)].startswith("__") and not name.startswith("__")):
            out[id(value)] = name
    return out


_TENSOR_METHODS = _tensor_method_names()

# Ops whose (non-tensor) result is data of a tensor: the recording keeps the example's value.
_ESCAPES = frozenset(
    "item tolist numpy __bool__ __int__ __float__ __index__ __complex__ __array__ __contains__".split()
)

_SIMPLE = (int, float, bool, complex, str, type(None), type(...), torch.dtype, torch.device,
           torch.memory_format, torch.layout)  # fmt: skip


@attrs.define
class _Pending:
    """A tensor inside an op's output container, reached from ``node`` by indexing along ``path``."""

    node: fx.Node
    path: tuple[Any, ...]


def _tensor_paths(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Tensor]]:
    if isinstance(value, Tensor):
        yield path, value
    elif isinstance(value, (tuple, list)):
        for i, v in enumerate(value):
            yield from _tensor_paths(v, (*path, i))
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield from _tensor_paths(v, (*path, k))


def _tensors(value: Any) -> list[Tensor]:
    return [t for _, t in _tensor_paths(value)]


def _ints(value: Any) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        return [value]
    if isinstance(value, (tuple, list)):
        return [i for v in value for i in _ints(v)]
    if isinstance(value, Mapping):
        return [i for v in value.values() for i in _ints(v)]
    return []


class _Recording(TorchFunctionMode):
    """Writes the torch ops of a real run into an fx graph (see the module docstring)."""

    def __init__(self, model: nn.Module, is_leaf: Callable[[nn.Module, str], bool]) -> None:
        super().__init__()
        self.graph = fx.Graph()
        self.model = model
        self.nodes: WeakIdKeyDictionary = WeakIdKeyDictionary()  # tensor -> fx.Node | _Pending
        self.gaps: WeakIdKeyDictionary = WeakIdKeyDictionary()  # tensor -> (aten op, module)
        self.state: dict[int, str] = {}  # id of each parameter / buffer -> its name
        for name, t in (*model.named_parameters(), *model.named_buffers()):
            self.state.setdefault(id(t), name)
        self.names: dict[int, str] = {}
        for name, m in model.named_modules(remove_duplicate=False):
            self.names.setdefault(id(m), name)
        self.is_leaf = is_leaf
        self.attrs: dict[str, fx.Node] = {}  # get_attr target -> node
        self.items: dict[tuple[fx.Node, Any], fx.Node] = {}  # (container node, key) -> getitem node
        self.objects: dict[str, Any] = {}  # constant name -> the object a get_attr node reads
        self.varying: set[fx.Node] = set()  # nodes whose value depends on the inputs
        self.stack: list[tuple[str, bool]] = []  # (module name, leaf) of the modules running
        self.quiet = 0  # > 0 while a leaf module (or our own code) runs: nothing recorded
        self.busy = 0  # > 0 while a recorded torch function runs
        self.failure: tuple[str, str] | None = None  # (op, module) of the first op that raised
        self.specialized: list[str] = []
        self.constants: list[str] = []
        self.sizes: set[int] = set()  # every size the forward read from a tensor so far

    # -- where we are ----------------------------------------------------------------------------

    def module_path(self) -> str:
        return self.stack[-1][0] if self.stack else ""

    def module_stack(self) -> dict[str, tuple[str, type]]:
        stack: dict[str, tuple[str, type]] = {}
        for name, _ in self.stack:
            if name:
                stack[name] = (name, type(self.model.get_submodule(name)))
        return stack

    def where(self) -> str:
        path = self.module_path()
        return f"module '{path}' ({type(self.model.get_submodule(path)).__name__})" if path else (
            f"the forward of {type(self.model).__name__}")

    # -- tensors to nodes ------------------------------------------------------------------------

    def node_of(self, t: Tensor, op: str) -> fx.Node:
        entry = self.nodes.get(t)
        if isinstance(entry, _Pending):
            node = entry.node
            for key in entry.path:
                if (node, key) not in self.items:
                    item = self.graph.call_function(operator.getitem, (node, key))
                    item.meta["nn_module_stack"] = node.meta.get("nn_module_stack", {})
                    if node in self.varying:
                        self.varying.add(item)
                    self.items[(node, key)] = item
                node = self.items[(node, key)]
            self.nodes[t] = node
            return node
        if entry is not None:
            return entry
        name = self.state.get(id(t))
        if name is None:  # a constant: one get_attr node for all its uses
            name = self.constant(t, op)
            self.nodes[t] = self.attrs[name] = self.graph.get_attr(name)
        if name not in self.attrs:
            self.attrs[name] = self.graph.get_attr(name)
        return self.attrs[name]

    def constant(self, value: Any, op: str) -> str:
        if isinstance(value, Tensor) and value in self.gaps:
            aten, module = self.gaps[value]
            where = f"module '{module}'" if module else f"the forward of {type(self.model).__name__}"
            raise GraphCaptureError(
                f"the recording cannot follow op {aten} in {where}: it ran outside torch's Python API "
                "(as a C++ extension calling ATen does), and its result reaches op "
                f"{op} in {self.where()}. Remedies: call that code as plain Python modules, pass the "
                "dependency groups by hand (groups=...), or exclude the module from the config.",
                module=module,
                op=aten,
            )
        name = f"_tensor_constant{len(self.objects)}" if isinstance(value, Tensor) else f"_constant{len(self.objects)}"
        self.objects[name] = value
        if isinstance(value, Tensor):
            self.constants.append(f"{name} {list(value.shape)} (first used by {op} in {self.where()})")
        return name

    def arg(self, value: Any, op: str) -> Any:
        if isinstance(value, Tensor):
            return self.node_of(value, op)
        if isinstance(value, _SIMPLE):
            return value
        if isinstance(value, (tuple, list)):  # also torch.Size, namedtuples: plain sequences
            mapped = [self.arg(v, op) for v in value]
            return mapped if isinstance(value, list) else tuple(mapped)
        if isinstance(value, Mapping):
            return {k: self.arg(v, op) for k, v in value.items()}
        if isinstance(value, slice):
            return slice(self.arg(value.start, op), self.arg(value.stop, op), self.arg(value.step, op))
        name = self.constant(value, op)
        if name not in self.attrs:
            self.attrs[name] = self.graph.get_attr(name)
        return self.attrs[name]

    def bind(self, node: fx.Node, out: Any) -> None:
        if isinstance(out, Tensor):
            self.nodes[out] = node
            return
        for path, t in _tensor_paths(out):
            self.nodes[t] = _Pending(node, path)

    def add(self, op: str, target: Any, args: tuple, kwargs: dict, out: Any, label: str) -> fx.Node:
        node = self.graph.create_node(op, target, self.arg(args, label), self.arg(kwargs, label))
        node.meta["nn_module_stack"] = self.module_stack()
        sized = self.sizes.intersection(_ints((args, kwargs)))
        if sized:
            node.meta[SIZE_ARGS] = frozenset(sized)
        if any(n in self.varying for n in node.all_input_nodes):
            self.varying.add(node)
        self.bind(node, out)
        return node

    def placeholder(self, name: str, value: Any) -> None:
        node = self.graph.placeholder(name)
        self.varying.add(node)
        self.bind(node, value)

    # -- recording -------------------------------------------------------------------------------

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if self.quiet:
            return self._run(func, args, kwargs)
        out = self._run(func, args, kwargs)
        self.quiet += 1  # our own bookkeeping calls no torch function, but be sure
        try:
            self._record(func, args, kwargs, out)
        finally:
            self.quiet -= 1
        return out

    def _run(self, func: Any, args: tuple, kwargs: dict) -> Any:
        self.busy += 1
        try:
            return func(*args, **kwargs)
        except Exception:
            if self.failure is None:
                self.failure = (_describe(func), self.module_path())
            raise
        finally:
            self.busy -= 1

    def _record(self, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
        label = _describe(func)
        name = _method_name(func)
        if name == "__setitem__":  # returns None: the node stands for the tensor written into
            self.add("call_function", setitem_, args, kwargs, args[0], label)
            return
        if not _tensors(out):
            if name in ("size", "__len__") or label == "Tensor.shape":
                self.sizes.update(_ints(out))
            if name in _ESCAPES and any(self._varies(t) for t in _tensors((args, kwargs))):
                frame = _user_frame(traceback.extract_stack())
                self.specialized.append(f"{label} in {self.where()}{frame}")
            return
        if getattr(func, "__name__", None) == "__get__" and type(func).__name__ == "method-wrapper":
            self.add("call_function", builtins.getattr, (args[0], func.__self__.__name__), {}, out, label)
        elif name in _OPERATORS:
            fn, reflected = _OPERATORS[name]
            self.add("call_function", fn, (args[1], args[0], *args[2:]) if reflected else args, kwargs, out, label)
        elif name is not None:
            self.add("call_method", name, args, kwargs, out, label)
        else:
            self.add("call_function", func, args, kwargs, out, label)

    def _varies(self, t: Tensor) -> bool:
        entry = self.nodes.get(t)
        node = entry.node if isinstance(entry, _Pending) else entry
        return node in self.varying

    def before(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        name = self.names.get(id(module), "")
        leaf = bool(name) and self.is_leaf(module, name)
        self.stack.append((name, leaf))
        if leaf:
            self.quiet += 1

    def after(self, module: nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
        name, leaf = self.stack.pop()
        if not leaf:
            return
        self.quiet -= 1
        if self.quiet == 0:
            self.quiet += 1
            try:
                self.add("call_module", name, args, kwargs, out, f"module '{name}'")
            finally:
                self.quiet -= 1

    def inside(self) -> bool:
        return self.busy > 0 or self.quiet > 0


class _Gaps(TorchDispatchMode):
    """Marks the tensors made by ATen ops that ran outside every recorded torch function."""

    def __init__(self, recording: _Recording) -> None:
        super().__init__()
        self.recording = recording

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if not self.recording.inside():
            for t in _tensors(out):
                self.recording.gaps[t] = (str(func), self.recording.module_path())
        return out


def _method_name(func: Any) -> str | None:
    return _TENSOR_METHODS.get(id(func))


def _describe(func: Any) -> str:
    name = _method_name(func)
    if name is not None:
        return f"Tensor.{name}"
    if getattr(func, "__name__", None) == "__get__" and hasattr(func, "__self__"):
        return f"Tensor.{getattr(func.__self__, '__name__', '?')}"
    module = getattr(func, "__module__", None) or ""
    return f"{module}.{getattr(func, '__name__', repr(func))}".lstrip(".")


def _hooks(model: nn.Module, recording: _Recording) -> list[Any]:
    handles = []
    for m in model.modules():
        if isinstance(m, torch.jit.ScriptModule):  # takes no hooks; its ops are recorded one by one
            continue
        handles.append(m.register_forward_pre_hook(recording.before, with_kwargs=True, prepend=True))
        handles.append(m.register_forward_hook(recording.after, with_kwargs=True))
    return handles


def _staging(model: nn.Module, objects: Mapping[str, Any]) -> nn.Module:
    """A module holding the model's children, own parameters and buffers, and the recorded
    constants, for :class:`torch.fx.GraphModule` to copy its targets from (the model is untouched)."""
    root = nn.Module()
    for name, child in model.named_children():
        root.add_module(name, child)
    for name, p in model.named_parameters(recurse=False):
        root.register_parameter(name, p)
    for name, b in model.named_buffers(recurse=False):
        root.register_buffer(name, b)
    for name, value in objects.items():
        if isinstance(value, Tensor):
            root.register_buffer(name, value)
        else:
            setattr(root, name, value)
    return root


def _record(model: nn.Module, bound: inspect.BoundArguments, names: frozenset[str],
            types: tuple[type[nn.Module], ...]) -> tuple[fx.GraphModule, _Recording]:
    given = inspect.BoundArguments(bound.signature, _clone(bound.arguments))
    args, kwargs = given.args, given.kwargs  # called as given: decorators may read the keywords
    flat = _flat_inputs(given)
    recording = _Recording(model, lambda m, name: _is_leaf(m, name, names, types))
    for name, value in flat:
        recording.placeholder(name, value)
    values = [v for _, v in flat]
    with state_kept(model), _quiet_run(model, _devices(values)), _same_draws(_devices(values)) as rewind:
        handles = _hooks(model, recording)
        try:
            with recording, _Gaps(recording):
                out = model(*args, **kwargs)
        except GraphCaptureError:
            raise
        except Exception as err:
            raise _forward_error(model, recording, err) from err
        finally:
            for handle in handles:
                handle.remove()
        recording.graph.output(recording.arg(out, "the output"))
        gm = fx.GraphModule(_staging(model, recording.objects), recording.graph, type(model).__name__)
        rewind()
        replay = _ShapeRecorder(gm, remedy=False).run(*_clone([v for _, v in _flat_inputs(bound)]))
    _check_replay(model, out, replay, recording)
    return gm, recording


@contextlib.contextmanager
def _same_draws(devices: list[torch.device]) -> Iterator[Callable[[], None]]:
    """Yields a function that puts the RNGs back to their state at entry (so that a replay draws
    what the recorded run drew); :func:`_quiet_run`'s fork restores the caller's state afterwards."""
    cuda = sorted({d.index or 0 for d in devices if d.type == "cuda"})
    cpu = torch.random.get_rng_state()
    gpu = [torch.cuda.get_rng_state(i) for i in cuda]

    def rewind() -> None:
        torch.random.set_rng_state(cpu)
        for i, state in zip(cuda, gpu):
            torch.cuda.set_rng_state(state, i)

    yield rewind


def _forward_error(model: nn.Module, recording: _Recording, err: Exception) -> GraphCaptureError:
    op, module = recording.failure or ("", recording.module_path())
    at = f" at op {op}" if op else ""
    where = f"module '{module}'" if module else f"the forward of {type(model).__name__}"
    return GraphCaptureError(
        f"running {type(model).__name__}.forward on the example inputs failed{at} in {where}: "
        f"{type(err).__name__}: {err}{_user_frame(traceback.extract_tb(err.__traceback__))}. "
        "Check that example_inputs fit the model.",
        module=module,
        op=op or None,
    )


def _check_replay(model: nn.Module, out: Any, replay: Any, recording: _Recording) -> None:
    expected, got = _tensors(out), _tensors(replay)
    if len(expected) != len(got):
        raise GraphCaptureError(
            f"the graph recorded from a run of {type(model).__name__} returns {len(got)} tensors where the "
            f"forward returned {len(expected)}"
        )
    for i, (a, b) in enumerate(zip(expected, got)):
        if a.shape != b.shape or not torch.allclose(a.float(), b.float(), rtol=1e-4, atol=1e-5, equal_nan=True):
            held = "; constants it holds: " + ", ".join(recording.constants) if recording.constants else ""
            raise GraphCaptureError(
                f"the graph recorded from a run of {type(model).__name__} does not reproduce output tensor {i} "
                f"of the forward (shape {list(a.shape)}): some of its ops ran outside torch's Python API or "
                f"depend on Python state{held}. Pass the dependency groups by hand (groups=...)."
            )


def capture(
    model: nn.Module,
    example_inputs: Any,
    *,
    leaf_modules: Iterable[str | type[nn.Module]] = (),
    method: Method = "auto",
) -> fx.GraphModule:
    """Capture ``model``'s forward as an fx graph whose nodes carry the shapes seen on ``example_inputs``.

    Args:
        model: the model; not modified. The returned graph shares its submodules (read only).
        example_inputs: a tensor, a tuple of positional inputs, a dict of keyword inputs, or a
            single dict input of ``model.forward`` (see :func:`bind_inputs`), e.g. a
            ``[1, 3, 32, 32]`` image batch or ``{"input_ids": ..., "attention_mask": ...}``.
            Forward parameters not given keep their defaults.
        leaf_modules: module qualified names or module types to keep as single ``call_module``
            nodes instead of following their forward.
        method: ``"fx"`` (symbolic tracing), ``"record"`` (the ops of a real run on
            ``example_inputs``; the graph holds for inputs of those shapes), or ``"auto"``: fx,
            and a recording when fx fails (logged at INFO, and in :func:`capture_info`).

    Returns:
        A ``GraphModule``; every node producing tensors has ``meta["tensor_meta"]`` (fx's
        ``TensorMetadata``, or a tuple of them for multi-output ops).

    Raises:
        GraphCaptureError: the capture failed; the message names the module, the op, the source
            line and the remedies.
        ValueError: ``method`` is not one of :data:`METHODS`.

    >>> gm = capture(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU()), torch.zeros(1, 3, 8, 8))
    >>> [tuple(n.meta["tensor_meta"].shape) for n in gm.graph.nodes if n.op == "call_module"]
    [(1, 8, 6, 6), (1, 8, 6, 6)]
    >>> capture_info(gm).method
    'fx'
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    names, types = _split_leaves(leaf_modules)
    bound = bind_inputs(model, example_inputs)
    if method == "fx":
        gm, info = _trace(model, bound, names, types), CaptureInfo("fx", "method='fx' was asked for")
    elif method == "record":
        gm, rec = _record(model, bound, names, types)
        info = CaptureInfo("record", "method='record' was asked for", tuple(rec.specialized), tuple(rec.constants))
    else:
        try:
            gm, info = _trace(model, bound, names, types), CaptureInfo("fx", "torch.fx traced the forward")
        except GraphCaptureError as err:
            reason = "torch.fx failed: " + str(err).split(" Remedies:")[0].rstrip(".")
            log.info("capture of %s: %s; recording a run instead", type(model).__name__, reason)
            try:
                gm, rec = _record(model, bound, names, types)
            except GraphCaptureError as rec_err:
                raise GraphCaptureError(
                    f"{rec_err} (method='auto' recorded a run because {reason})", module=rec_err.module, op=rec_err.op
                ) from rec_err
            info = CaptureInfo("record", reason, tuple(rec.specialized), tuple(rec.constants))
    gm.meta[_CAPTURED] = True
    gm.meta[_INFO] = info
    return gm


def is_captured(graph: object) -> bool:
    """Whether ``graph`` is a GraphModule returned by :func:`capture` (it carries shapes).

    >>> is_captured(nn.Linear(2, 2))
    False
    """
    return isinstance(graph, fx.GraphModule) and bool(graph.meta.get(_CAPTURED, False))


def capture_info(graph: fx.GraphModule) -> CaptureInfo:
    """How :func:`capture` built ``graph``: the method that ran and why.

    Raises:
        ValueError: ``graph`` was not returned by :func:`capture`.
    """
    if not is_captured(graph):
        raise ValueError(f"not a graph returned by capture(): {type(graph).__name__}")
    return graph.meta[_INFO]

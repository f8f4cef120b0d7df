"""Capture a model's forward as a ``torch.fx`` graph that knows every tensor's shape.

:func:`capture` traces with a :class:`torch.fx.Tracer` whose leaves are torch's own modules, every
subclass of the channel-producing layers (:data:`PRODUCER_TYPES`) and the modules the caller names,
then runs the graph once on the example inputs to record ``node.meta["tensor_meta"]`` (the same
record as fx's ``ShapeProp``). The model is not changed: the run happens in eval mode under
``no_grad`` (each module's ``training`` flag is restored afterwards) on clones of the inputs.

When a forward cannot be traced (data-dependent control flow, iteration over a tensor, ...)
:class:`GraphCaptureError` says which module failed, where, and what the user can do instead.
"""

from __future__ import annotations

import inspect
import traceback
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import optree
import torch
import torch.fx as fx
from torch import nn
from torch.fx.passes.shape_prop import _extract_tensor_metadata

__all__ = ["PRODUCER_TYPES", "GraphCaptureError", "capture", "is_captured"]

#: Layers whose output channels a channel pruner removes; always leaves of the captured graph.
PRODUCER_TYPES: tuple[type[nn.Module], ...] = (
    nn.Conv1d, nn.Conv2d, nn.Conv3d,
    nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
    nn.Linear,
)  # fmt: skip

_CAPTURED = "purecompress.captured"
_TORCH_DIR = str(Path(torch.__file__).parent)
_THIS_DIR = str(Path(__file__).parent)


class GraphCaptureError(RuntimeError):
    """The model's forward could not be captured as a graph.

    Attributes:
        module: qualified name of the innermost module that failed ("" for the model's own
            forward, None when unknown).
        op: the graph op that failed when shapes were recorded (None while tracing).
    """

    def __init__(self, message: str, *, module: str | None = None, op: str | None = None) -> None:
        super().__init__(message)
        self.module = module
        self.op = op


def _remedy(module: str | None) -> str:
    leaf = f"leaf_modules=[{module!r}]" if module else "leaf_modules=[...] naming that submodule"
    excluded = f"'{module}'" if module else "the module"
    return (
        "Remedies: pass the dependency groups by hand (groups=...), exclude "
        f"{excluded} from the config, or mark the submodule that holds the failing code as a "
        f"leaf ({leaf})."
    )


def _user_frame(err: BaseException) -> str:
    """'file:line: source' of the innermost traceback frame outside torch and this package."""
    frames = [f for f in traceback.extract_tb(err.__traceback__) if not f.filename.startswith((_TORCH_DIR, _THIS_DIR))]
    if not frames:
        return ""
    f = frames[-1]
    return f" (at {Path(f.filename).name}:{f.lineno}: `{(f.line or '').strip()}`)"


class _Tracer(fx.Tracer):
    """fx tracer with extra leaves that remembers the innermost module whose forward failed."""

    def __init__(self, names: frozenset[str], types: tuple[type[nn.Module], ...]) -> None:
        super().__init__()
        self.leaf_names = names
        self.leaf_types = types + PRODUCER_TYPES
        self.failed_module: str | None = None

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return (
            module_qualified_name in self.leaf_names
            or isinstance(m, self.leaf_types)
            or super().is_leaf_module(m, module_qualified_name)
        )

    def call_module(self, m: nn.Module, forward: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_module is None:  # innermost module: the first handler to run
                self.failed_module = self.path_of_module(m)
            raise


class _ShapeRecorder(fx.Interpreter):
    """Runs the graph once and stores ``tensor_meta`` on every node (as fx's ShapeProp does)."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.extra_traceback = False  # our error already names the node

    def run_node(self, n: fx.Node) -> Any:
        try:
            result = super().run_node(n)
        except Exception as err:
            stack = n.meta.get("nn_module_stack") or {}
            module = n.target if n.op == "call_module" else next(reversed(stack.values()), ("",))[0]
            where = f"module '{module}'" if module else "the model's forward"
            raise GraphCaptureError(
                f"running op {n.format_node()} in {where} on the example inputs failed: "
                f"{type(err).__name__}: {err}. Check that example_inputs fit the model. "
                + _remedy(str(module) or None),
                module=str(module),
                op=str(n.target),
            ) from err
        if any(isinstance(x, torch.Tensor) for x in optree.tree_leaves(result)):
            n.meta["tensor_meta"] = optree.tree_map(
                lambda x: _extract_tensor_metadata(x) if isinstance(x, torch.Tensor) else x,
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


def _bind(model: nn.Module, example_inputs: Any) -> inspect.BoundArguments:
    if isinstance(example_inputs, torch.Tensor):
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
        raise TypeError(f"example_inputs do not fit {type(model).__name__}.forward{signature}: {err}") from None


def capture(
    model: nn.Module,
    example_inputs: Any,
    *,
    leaf_modules: Iterable[str | type[nn.Module]] = (),
) -> fx.GraphModule:
    """Trace ``model`` into an fx graph whose nodes carry the shapes seen on ``example_inputs``.

    Args:
        model: the model; not modified. The returned graph shares its submodules (read only).
        example_inputs: a tensor, a tuple of positional inputs, or a dict of keyword inputs of
            ``model.forward``, e.g. a ``[1, 3, 32, 32]`` image batch. Forward parameters not
            given keep their defaults as constants of the graph.
        leaf_modules: module qualified names or module types to keep as single ``call_module``
            nodes instead of tracing into them (use it for submodules fx cannot trace).

    Returns:
        A ``GraphModule``; every node producing tensors has ``meta["tensor_meta"]`` (fx's
        ``TensorMetadata``, or a tuple of them for multi-output ops).

    Raises:
        GraphCaptureError: tracing or the shape run failed; the message names the module, the
            source line and the remedies.

    >>> gm = capture(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU()), torch.zeros(1, 3, 8, 8))
    >>> [tuple(n.meta["tensor_meta"].shape) for n in gm.graph.nodes if n.op == "call_module"]
    [(1, 8, 6, 6), (1, 8, 6, 6)]
    """
    tracer = _Tracer(*_split_leaves(leaf_modules))
    bound = _bind(model, example_inputs)
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
        raise GraphCaptureError(
            f"torch.fx cannot trace {where}: {type(err).__name__}: {err}{_user_frame(err)}. " + _remedy(module or None),
            module=module,
        ) from err
    gm = fx.GraphModule(tracer.root, graph, type(model).__name__)
    bound.apply_defaults()
    inputs = optree.tree_map(
        lambda x: x.clone() if isinstance(x, torch.Tensor) else x,
        (*bound.args, *bound.kwargs.values()),
        none_is_leaf=True,
    )
    flags = [(m, m.training) for m in model.modules()]
    try:
        for m, _ in flags:
            m.training = False
        with torch.no_grad():
            _ShapeRecorder(gm).run(*inputs)
    finally:
        for m, training in flags:
            m.training = training
    gm.meta[_CAPTURED] = True
    return gm


def is_captured(graph: object) -> bool:
    """Whether ``graph`` is a GraphModule returned by :func:`capture` (it carries shapes).

    >>> is_captured(nn.Linear(2, 2))
    False
    """
    return isinstance(graph, fx.GraphModule) and bool(graph.meta.get(_CAPTURED, False))

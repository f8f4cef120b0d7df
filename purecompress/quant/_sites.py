"""Activation quantization without hooks: the model's forward as an fx graph with quantization sites.

:func:`quantized_call <purecompress.quant.transform.quantized_call>` has to fake-quantize the input
and output of selected modules *inside* the model's forward. Hooks on the user's modules do that
but are shared state (two threads calling one transform see each other's hooks) and, registered per
call, cut a compiled step into three graphs. Instead, :class:`SiteGraph` traces the forward once
with ``torch.fx`` (the selected modules are leaves) and rewrites the graph: every call of a
selected module gets ``_site(site, x, key)`` nodes before it (input) and after it (output), where
``site`` is the graph's first argument, a function supplied per call. The graph module owns
*shallow copies* of the modules it calls (their own parameter dicts, the same tensors and hooks),
so ``functional_call`` on it never swaps tensors on the user's model.

fx bakes into the graph what the forward reads from Python: the ``training`` flag of a module
whose forward is inlined (``F.dropout(x, training=self.training)``), which optional arguments were
given, and the module tree itself. A graph is therefore keyed by the call pattern (number of
positional arguments, keyword names) and the inlined modules' flags, and checked against the
model's current module tree and hooks before each use; anything that does not match, or a forward
that fx cannot trace, takes the hook path, which is always correct.

One more rewrite is for compiled steps: a plain ReLU (an exact ``nn.ReLU`` without hooks,
``torch.relu``, ``F.relu``) whose output only a site reads becomes :func:`_relu`, the same values
and gradients with a backward that makes its mask from the float input instead of saving a boolean one (see there why
that matters under inductor); a hook put later on such a ReLU module sends the call to the hook
path like one on an inlined module.
"""

from __future__ import annotations

import copy
import inspect
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.fx as fx
from torch import Tensor, nn

from purecompress._state import state_kept

__all__ = ["SiteGraph", "Sites"]

_log = logging.getLogger("purecompress.quant")

#: ``module name -> (quantize input?, quantize output?)``
Sites = Mapping[str, tuple[bool, bool]]

#: ``(number of positional arguments, keyword names, training flags of the inlined modules)``
Key = tuple[int, tuple[str, ...], tuple[bool, ...]]


def _site(site: Callable[[Any, str], Tensor], x: Any, key: str) -> Tensor:
    """The graph's quantization node: ``site`` is the call's own function (first graph argument)."""
    return site(x, key)


class _ReluFloatMask(torch.autograd.Function):
    """ReLU whose backward mask is float arithmetic on its input (``g * [a > 0 or a is NaN]``,
    ``threshold_backward``'s rule): a comparison would be moved into the forward by AOTAutograd's
    partitioner and saved as a boolean tensor, which is what this avoids."""

    generate_vmap_rule = True

    @staticmethod
    def forward(a: Tensor) -> Tensor:
        return torch.relu(a)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (a,) = ctx.saved_tensors
        # 1 - s for s = sign(a) in {1, 0, -1, NaN} is {0, 1, 2, NaN}; fmax(., 0) sends NaN to 0
        # (vectorized, unlike isnan), fmin(., 1) caps at 1: the mask is 1 - that
        return grad * (1 - torch.fmin(torch.fmax(1 - torch.sign(a), torch.zeros_like(a)), torch.ones_like(a)))


def _relu(a: Tensor) -> Tensor:
    """A ReLU whose output only a quantization site reads. Compiled, the site's quantized copy
    replaces the ReLU's output in the backward, so AOTAutograd's partitioner saves the ReLU's mask
    as a boolean tensor instead; inductor's CPU kernels store booleans about 50x slower than
    floats (torch 2.13: 3.1 ms against 0.05 ms for nine 64x512 masks), which made the mask stores
    half the cost of a compiled QAT step. This ReLU's backward computes its mask from the float
    input instead. In eager mode it is ``torch.relu``; the values are the same in both, and so are
    the gradients (NaN inputs included), but for an inf or NaN gradient at an input <= 0 (0 * inf is
    NaN here, 0 for ``torch.relu``)."""
    if torch.compiler.is_compiling():
        return _ReluFloatMask.apply(a)
    return torch.relu(a)


class _Tracer(fx.Tracer):
    """torch's modules and the selected ones are leaves; remembers the modules it inlines."""

    def __init__(self, leaves: frozenset[str]) -> None:
        super().__init__()
        self.leaves = leaves
        self.inlined: dict[str, nn.Module] = {}

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return module_qualified_name in self.leaves or super().is_leaf_module(m, module_qualified_name)

    def call_module(self, m: nn.Module, forward: Callable[..., Any], args: tuple[Any, ...],
                    kwargs: dict[str, Any]) -> Any:
        name = self.path_of_module(m)
        if not self.is_leaf_module(m, name):
            self.inlined[name] = m
        return super().call_module(m, forward, args, kwargs)


def _shell(module: nn.Module) -> nn.Module:
    """A shallow copy with its own parameter, buffer and child dicts (same tensors, same hooks)."""
    new = copy.copy(module)
    new._parameters = dict(module._parameters)
    new._buffers = dict(module._buffers)
    new._modules = {k: None if v is None else _shell(v) for k, v in module._modules.items()}
    return new


def _all(module: nn.Module) -> list[nn.Module]:
    """Every module of the tree, shared ones at each place (``named_modules`` without dedup)."""
    return [m for _, m in module.named_modules(remove_duplicate=False)]


def _has_hooks(m: nn.Module) -> bool:
    return bool(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks)


class _Entry:
    """One traced graph and what it assumed about the model."""

    def __init__(self, gm: fx.GraphModule, names: frozenset[str], inlined: tuple[nn.Module, ...]) -> None:
        self.gm = gm
        self.names = names  # parameter/buffer names the graph module holds
        self.inlined = inlined
        self.lock = threading.RLock()  # functional_call swaps tensors on the graph's module copies


class SiteGraph:
    """Traced forwards of one model with quantization sites, per call pattern (see the module doc).

    Args:
        model: the model the transform was built for (held by reference, never modified).
        sites: which modules get input and/or output sites.
    """

    def __init__(self, model: nn.Module, sites: Sites) -> None:
        self.model = model
        self.sites = dict(sites)
        self._entries: dict[Key, _Entry | None] = {}
        self._modules = tuple(_all(model))
        # the module tree as built: (parent, child name, child) for every edge
        self._edges = tuple((parent, name, child) for parent in self._modules
                            for name, child in parent._modules.items())
        self._params = inspect.signature(model.forward).parameters
        # trace the plain call pattern (the required arguments, positionally) for the model's modes
        # now, in train() and in eval(), so that a compiled step finds its graph without an eager call
        required = sum(p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
                       for p in self._params.values())
        now = tuple(m.training for m in self._modules)
        for flags in dict.fromkeys((now, (True,) * len(now), (False,) * len(now))):
            if (required, (), ()) not in self._entries:
                self._entries[(required, (), flags)] = self._trace(required, (), flags)

    def lookup(self, model: nn.Module, n_args: int, kw: tuple[str, ...]) -> _Entry | None:
        """The traced graph for this call (traced on a miss, in eager mode only); None: use hooks."""
        if model is not self.model or not self._tree_unchanged():
            return None
        if (n_args, kw, ()) in self._entries:  # fx could not trace this call pattern
            return None
        key = (n_args, kw, tuple(m.training for m in self._modules))
        if key in self._entries:
            entry = self._entries[key]
        elif torch.compiler.is_compiling():
            return None  # never trace inside a compiled region: hooks this time
        else:
            entry = self._entries[key] = self._trace(*key)
        if entry is None or any(_has_hooks(m) for m in entry.inlined):
            return None  # a hook on an inlined module would not fire in the graph
        return entry

    def _tree_unchanged(self) -> bool:
        return all(parent._modules.get(name) is child for parent, name, child in self._edges)

    def _trace(self, n_args: int, kw: tuple[str, ...], flags: tuple[bool, ...]) -> _Entry | None:
        """Trace the forward for ``n_args`` positional and ``kw`` keyword arguments (the others take
        their defaults, baked in), with the modules' ``training`` flags set to ``flags``, on a tree of
        shallow copies of the model's modules; None (and remembered) when fx cannot."""
        positional = [p for p in self._params.values()
                      if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in self._params.values()):
            return self._fail(n_args, kw, "the forward takes *args or **kwargs")
        given = {p.name for p in positional[:n_args]} | set(kw)
        concrete = {}
        for p in self._params.values():
            if p.name not in given:
                if p.default is p.empty:
                    return self._fail(n_args, kw, f"argument {p.name!r} is not given")
                concrete[p.name] = p.default
        root = _shell(self.model)
        for shell, flag in zip(_all(root), flags, strict=True):
            shell.training = flag
        tracer = _Tracer(frozenset(self.sites))
        try:
            with state_kept(root):  # a cache the forward fills (shared with the user's modules) is emptied again
                graph = tracer.trace(root, concrete_args=concrete or None)
        except Exception as err:  # noqa: BLE001 - any tracing failure means: use hooks
            return self._fail(n_args, kw, f"torch.fx cannot trace it ({type(err).__name__}: {err})")
        if any(_has_hooks(m) for m in tracer.inlined.values()):
            return self._fail(n_args, kw, "a module the graph would inline has hooks")
        replaced = self._rewrite(graph, root)
        gm = fx.GraphModule(root, graph)
        names = frozenset(n for n, _ in gm.named_parameters(remove_duplicate=False)) | frozenset(
            n for n, _ in gm.named_buffers(remove_duplicate=False))
        names |= {str(n.target) for n in graph.nodes if n.op == "get_attr"}
        _log.debug("quantization sites traced as a graph (%d args, keywords %s)", n_args, kw)
        return _Entry(gm, names, (*tracer.inlined.values(), *replaced))

    def _fail(self, n_args: int, kw: tuple[str, ...], why: str) -> None:
        _log.info("quantization uses temporary hooks for this call pattern of %s: %s",
                  type(self.model).__name__, why)
        self._entries[(n_args, kw, ())] = None
        return None

    @staticmethod
    def _as_relu(graph: fx.Graph, root: nn.Module, relu: Any, replaced: list[nn.Module]) -> None:
        """Replace ``relu``, a plain ReLU node (module, ``torch.relu`` or ``F.relu``) whose output
        only a quantization site reads, by :func:`_relu` (an in-place one only when its input has no
        other reader, so in-place is unobservable); the replaced modules are appended to
        ``replaced`` (a hook put on one later sends the call to the hook path)."""
        if not isinstance(relu, fx.Node) or len(relu.users) != 1 or not relu.args:
            return
        if not isinstance(relu.args[0], fx.Node):
            return
        module = None
        if relu.op == "call_module":
            module = root.get_submodule(str(relu.target))
            if type(module) is not nn.ReLU or _has_hooks(module):
                return
            inplace = module.inplace
        elif relu.op == "call_function" and relu.target in (torch.relu, nn.functional.relu):
            inplace = bool(relu.kwargs.get("inplace", relu.args[1] if len(relu.args) > 1 else False))
        else:
            return
        if inplace and len(relu.args[0].users) != 1:
            return
        with graph.inserting_before(relu):
            new = graph.call_function(_relu, (relu.args[0],))
        relu.replace_all_uses_with(new)
        graph.erase_node(relu)
        if module is not None:
            replaced.append(module)

    def _rewrite(self, graph: fx.Graph, root: nn.Module) -> list[nn.Module]:
        """Insert the sites; returns the ReLU modules whose calls became :func:`_relu`."""
        replaced: list[nn.Module] = []
        placeholders = [n for n in graph.nodes if n.op == "placeholder"]
        with graph.inserting_before(placeholders[0] if placeholders else next(iter(graph.nodes))):
            site = graph.placeholder("_purecompress_site")
        for node in list(graph.nodes):
            if node.op != "call_module" or node.target not in self.sites:
                continue
            quant_input, quant_output = self.sites[str(node.target)]
            if quant_input:
                if node.args:
                    self._as_relu(graph, root, node.args[0], replaced)
                x = node.args[0] if node.args else None
                with graph.inserting_before(node):
                    q = graph.call_function(_site, (site, x, f"{node.target}.input"))
                node.args = (q, *node.args[1:])
            if quant_output:
                with graph.inserting_after(node):
                    q = graph.call_function(_site, (site, node, f"{node.target}.output"))
                node.replace_all_uses_with(q, delete_user_cb=lambda user, q=q: user is not q)
                self._as_relu(graph, root, node, replaced)  # a selected ReLU whose output is quantized
        graph.lint()
        return replaced

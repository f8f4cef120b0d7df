"""The NNI import shim: ``import nni...`` served by purecompress.compat.

:data:`MODULES` is the one table: each NNI module name a script may import, and the compat
modules (searched in order) whose public names it serves. :class:`NniFinder`, first in
``sys.meta_path``, answers every ``nni`` import from the table, so NNI itself is never imported
even when installed; a module or name not served fails with an error that says purecompress does
not provide it yet, and which feature brings it when that is known.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
from collections.abc import Sequence
from typing import Any

__all__ = ["MODULES", "NniFinder", "install", "uninstall"]

_C = "purecompress.compat."
_PRUNING = (_C + "pruning", _C + "iterative_pruner", _C + "scheduler")
_TOOLS = (_C + "tools", _C + "task_generator")
_EVALUATOR = (_C + "evaluator",)

#: NNI module -> compat modules whose public names it serves.
MODULES: dict[str, tuple[str, ...]] = {
    "nni": (_C + "trace",),
    "nni.compression": (),
    "nni.compression.pytorch": (_C + "base", *_EVALUATOR, _C + "speedup", _C + "quantization"),
    "nni.compression.pytorch.base": (_C + "base",),
    "nni.compression.pytorch.pruning": _PRUNING,
    "nni.compression.pytorch.pruning.tools": _TOOLS,
    "nni.compression.pytorch.utils": (_C + "utils", _C + "counter"),
    "nni.compression.pytorch.speedup": (_C + "speedup",),
    "nni.compression.pytorch.quantization": (_C + "quantization",),
    "nni.algorithms": (),
    "nni.algorithms.compression": (),
    "nni.algorithms.compression.pytorch": (),
    "nni.algorithms.compression.pytorch.pruning": (_C + "pruning_v1",),
    "nni.algorithms.compression.pytorch.quantization": (_C + "quantization",),
    "nni.algorithms.compression.v2": (),
    "nni.algorithms.compression.v2.pytorch": _EVALUATOR,
    "nni.algorithms.compression.v2.pytorch.base": (_C + "base",),
    "nni.algorithms.compression.v2.pytorch.pruning": _PRUNING,
    "nni.algorithms.compression.v2.pytorch.pruning.basic_pruner": (_C + "pruning",),
    "nni.algorithms.compression.v2.pytorch.pruning.tools": _TOOLS,
    "nni.algorithms.compression.v2.pytorch.utils": (_C + "utils", _C + "scaling", *_EVALUATOR),
    "nni.algorithms.compression.v2.pytorch.utils.scaling": (_C + "scaling",),
}

#: What brings a compat module that does not exist yet (for the error message).
COMING: dict[str, str] = {
    _C + "iterative_pruner": "iterative pruners (AGP, Linear, LotteryTicket, SimulatedAnnealing, AutoCompress, AMC)",
    _C + "scheduler": "pruning schedulers and task generators",
    _C + "task_generator": "pruning schedulers and task generators",
    _C + "evaluator": "evaluators and training-aware pruners (TorchEvaluator, Slim, Taylor, APoZ, MeanRank, ADMM)",
    _C + "speedup": "ModelSpeedup (compact models)",
    _C + "quantization": "quantizers (QAT, LSQ, DoReFa, BNN, Naive, Observer)",
    _C + "counter": "count_flops_params",
    _C + "pruning_v1": "NNI 1.x pruner names (not planned: use nni.compression.pytorch.pruning)",
}


def _import(name: str) -> types.ModuleType | None:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name == name:  # the compat module itself does not exist (yet)
            return None
        raise


class NniModule(types.ModuleType):
    """A stand-in for an NNI module: attribute lookups go to its compat sources."""

    def __init__(self, name: str, sources: Sequence[str]) -> None:
        super().__init__(name)
        self.__dict__["_sources"] = tuple(sources)
        self.__file__ = __file__
        if name == "nni":
            self.__version__ = "2.10.1+purecompress"

    def _modules(self) -> list[types.ModuleType]:
        return [m for m in map(_import, self.__dict__["_sources"]) if m is not None]

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name != "__all__":
            raise AttributeError(name)
        if name == "__all__":
            return sorted({n for m in self._modules() for n in getattr(m, "__all__", ())})
        for module in self._modules():
            if name in getattr(module, "__all__", ()) or (not name.startswith("_") and hasattr(module, name)):
                return getattr(module, name)
        missing = [COMING.get(s, s) for s in self.__dict__["_sources"] if _import(s) is None]
        hint = f"; it may come with: {', '.join(missing)}" if missing else ""
        raise AttributeError(f"purecompress does not provide {self.__name__}.{name} yet{hint}")

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(self.__getattr__("__all__")))


class NniFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves every ``nni`` / ``nni.*`` import from :data:`MODULES` (and refuses the rest)."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        del path, target
        if fullname != "nni" and not fullname.startswith("nni."):
            return None
        if fullname not in MODULES:
            raise ModuleNotFoundError(f"purecompress does not provide {fullname!r} yet (the NNI shim serves: "
                                      f"{', '.join(sorted(MODULES))})", name=fullname)
        return importlib.util.spec_from_loader(fullname, self, origin=__file__, is_package=True)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        return NniModule(spec.name, MODULES[spec.name])

    def exec_module(self, module: types.ModuleType) -> None:
        module.__file__ = __file__


def install() -> NniFinder:
    """Put the finder first in ``sys.meta_path`` and forget any NNI module already imported."""
    uninstall()
    for name in [n for n in sys.modules if n == "nni" or n.startswith("nni.")]:
        del sys.modules[name]
    finder = NniFinder()
    sys.meta_path.insert(0, finder)
    return finder


def uninstall() -> None:
    """Remove the finder (and the stand-in modules) again."""
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, NniFinder)]
    for name in [n for n, m in sys.modules.items() if isinstance(m, NniModule)]:
        del sys.modules[name]

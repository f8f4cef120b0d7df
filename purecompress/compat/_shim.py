"""The NNI import shim: ``import nni...`` served by purecompress.compat.

:data:`MODULES` is the one table: each NNI module name a script may import, and the compat
modules (searched in order) whose public names it serves. :class:`NniFinder`, first in
``sys.meta_path``, answers every ``nni`` import from the table, so NNI itself is never imported
even when installed; a module or name not served fails with an error that says purecompress does
not provide it yet, and which feature brings it when that is known. A missing *name* raises
:class:`NotProvidedError` (an ImportError), so ``from nni.x import Name`` keeps the message. The
served names are in each module's ``__dict__`` too (``module.__dict__['NaiveQuantizer']``).
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

__all__ = ["MODULES", "NniFinder", "NotProvidedError", "install", "uninstall"]

_C = "purecompress.compat."
_P = _C + "pruning."
_PRUNERS = (_P + "basic_pruner", _P + "movement_pruner", _P + "iterative_pruner", _P + "amc_pruner",
            _P + "basic_scheduler:PruningScheduler")
_TOOLS = (_P + "tools", _P + "task_generator")
_EVALUATOR = (_C + "evaluator", _C + "lightning_evaluator")
_SCHEDULER_BASE = (_P + "basic_scheduler:BasePruningScheduler", _P + "task_generator:Task,TaskResult")
_BASE = (_P + "base", *_SCHEDULER_BASE)
_QUANT_BASE = _C + ("quantization:Quantizer,QuantizerModuleWrapper,QuantizerIdentityWrapper,QuantGrad,QuantForward,"
                    "LayerInfo")

#: NNI module -> its sources: ``"compat.module"`` (its ``__all__``) or ``"compat.module:Name,Name"``.
MODULES: dict[str, tuple[str, ...]] = {
    "nni": (_C + "tracing:trace",),
    "nni.compression": (),
    "nni.compression.pytorch": (_P + "base:Pruner", _C + "quantization:Quantizer", *_EVALUATOR,
                                _C + "speedup:ModelSpeedup", _C + "apply_compression:apply_compression_results"),
    "nni.compression.pytorch.base": _BASE,
    "nni.compression.pytorch.pruning": _PRUNERS,
    "nni.compression.pytorch.pruning.tools": _TOOLS,
    "nni.compression.pytorch.utils": (_C + "utils", _C + "counter", _C + "shape_dependency",
                                      _C + "sensitivity_analysis:SensitivityAnalysis"),
    "nni.compression.pytorch.utils.shape_dependency": (_C + "shape_dependency",),
    "nni.compression.pytorch.utils.mask_conflict": (_C + "mask_conflict",),
    "nni.compression.pytorch.utils.num_param_counter": (_C + "apply_compression:get_total_num_weights",),
    "nni.compression.pytorch.utils.apply_compression": (_C + "apply_compression:apply_compression_results",),
    "nni.compression.pytorch.speedup": (_C + "speedup",),
    "nni.compression.pytorch.quantization": (_C + "quantization",),
    "nni.algorithms": (),
    "nni.algorithms.compression": (),
    "nni.algorithms.compression.pytorch": (),
    "nni.algorithms.compression.pytorch.pruning": (_C + "pruning_v1",),
    "nni.algorithms.compression.pytorch.pruning.weight_masker": (_C + "pruning_v1:WeightMasker",),
    "nni.algorithms.compression.pytorch.pruning.dependency_aware_pruner": (_C + "pruning_v1:DependencyAwarePruner",),
    "nni.algorithms.compression.pytorch.quantization": (_C + "quantization",),
    "nni.algorithms.compression.v2": (),
    "nni.algorithms.compression.v2.pytorch": _EVALUATOR,
    "nni.algorithms.compression.v2.pytorch.base": _BASE,
    "nni.algorithms.compression.v2.pytorch.pruning": _PRUNERS,
    "nni.algorithms.compression.v2.pytorch.pruning.basic_pruner": (_P + "basic_pruner",),
    "nni.algorithms.compression.v2.pytorch.pruning.tools": _TOOLS,
    "nni.algorithms.compression.v2.pytorch.utils": (_C + "utils", _P + "tools:Scaling", *_EVALUATOR),
    "nni.algorithms.compression.v2.pytorch.utils.scaling": (_P + "tools:Scaling",),
    "nni.algorithms.compression.v2.pytorch.pruning.iterative_pruner": (_P + "iterative_pruner",),
    "nni.algorithms.compression.v2.pytorch.pruning.basic_scheduler": (_P + "basic_scheduler",),
    "nni.algorithms.compression.v2.pytorch.pruning.auto_compress_pruner": (_P + "iterative_pruner",),
    "nni.algorithms.compression.v2.pytorch.pruning.amc_pruner": (_P + "amc_pruner",),
    "nni.algorithms.compression.v2.pytorch.pruning.tools.task_generator": (_P + "task_generator",),
    "nni.algorithms.compression.v2.pytorch.pruning.tools.base": (
        _P + "tools:DataCollector,HookCollectorInfo,TrainerBasedDataCollector,EvaluatorBasedDataCollector,"
             "MetricsCalculator,SparsityAllocator", _P + "task_generator:TaskGenerator"),
    "nni.algorithms.compression.v2.pytorch.pruning.tools.data_collector": (
        _P + "tools:TargetDataCollector,EvaluatorBasedTargetDataCollector,EvaluatorBasedHookDataCollector,"
             "WeightDataCollector,WeightTrainerBasedDataCollector,SingleHookTrainerBasedDataCollector",),
    "nni.algorithms.compression.v2.pytorch.pruning.tools.metrics_calculator": (
        _P + "tools:StraightMetricsCalculator,NormMetricsCalculator,HookDataNormMetricsCalculator,"
             "DistMetricsCalculator,APoZRankMetricsCalculator,MeanRankMetricsCalculator",),
    "nni.algorithms.compression.v2.pytorch.pruning.tools.sparsity_allocator": (
        _P + "tools:NormalSparsityAllocator,ThresholdSparsityAllocator,BankSparsityAllocator,"
             "GlobalSparsityAllocator,DependencyAwareAllocator",),
    "nni.algorithms.compression.v2.pytorch.utils.evaluator": _EVALUATOR,
    "nni.algorithms.compression.v2.pytorch.utils.constructor_helper": (
        _C + "evaluator:OptimizerConstructHelper,LRSchedulerConstructHelper",),
    "nni.algorithms.compression.v2.pytorch.utils.pruning": (_C + "utils",),
    "nni.algorithms.compression.v2.pytorch.base.scheduler": _SCHEDULER_BASE,
    "nni.compression.pytorch.utils.counter": (_C + "counter",),
    "nni.compression.pytorch.utils.sensitivity_analysis": (_C + "sensitivity_analysis",),
    "nni.compression.pytorch.speedup.compressor": (_C + "speedup:ModelSpeedup",),
    "nni.compression.pytorch.speedup.error_code": (_C + (
        "speedup:SpeedupError,EmptyLayerError,ShapeMisMatchError,InputsNumberError,OutputTypeError,UnBalancedGroupError"),),
    "nni.compression.pytorch.compressor": (_P + "base:Pruner,PrunerModuleWrapper", _QUANT_BASE),
    "nni.compression.pytorch.quantization.utils": (_C + "quantization.utils",),
    "nni.compression.pytorch.quantization.settings": (_C + "quantization.settings",),
    "nni.compression.pytorch.quantization.literal": (_C + "quantization:QuantType,BN_FOLD_TAG",),
}

#: What brings a compat module that does not exist yet (for the error message).
COMING: dict[str, str] = {}


def _import(name: str) -> types.ModuleType | None:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name == name:  # the compat module itself does not exist (yet)
            return None
        raise


class NotProvidedError(ImportError):
    """An NNI name that purecompress does not serve (yet)."""


class NniModule(types.ModuleType):
    """A stand-in for an NNI module: attribute lookups go to its compat sources."""

    def __init__(self, name: str, sources: Sequence[str]) -> None:
        super().__init__(name)
        self.__dict__["_sources"] = tuple(sources)
        self.__file__ = __file__
        if name == "nni":
            self.__version__ = "2.10.1+purecompress"

    def _served(self) -> list[tuple[types.ModuleType, tuple[str, ...]]]:
        """(compat module, the names it serves here) for each source that exists."""
        out = []
        for source in self.__dict__["_sources"]:
            path, _, names = source.partition(":")
            module = _import(path)
            if module is not None:
                out.append((module, tuple(names.split(",")) if names else tuple(getattr(module, "__all__", ()))))
        return out

    def __getattr__(self, name: str) -> Any:
        if name == "__all__":
            return sorted({n for _, names in self._served() for n in names})
        if name.startswith("__"):
            raise AttributeError(name)
        for source in self.__dict__["_sources"]:  # lazily: import only what can serve ``name``
            path, _, names = source.partition(":")
            if names and name not in names.split(","):
                continue
            module = _import(path)
            if module is not None and name in (names.split(",") if names else getattr(module, "__all__", ())):
                return getattr(module, name)
        if f"{self.__name__}.{name}" in MODULES:  # a submodule not imported yet: let the import system do it
            raise AttributeError(name)
        paths = [s.partition(":")[0] for s in self.__dict__["_sources"]]
        missing = [COMING.get(p, p) for p in paths if _import(p) is None]
        hint = f"; it may come with: {', '.join(missing)}" if missing else ""
        # An ImportError, not an AttributeError: `from nni.x import Name` would replace an
        # AttributeError's message with a generic "cannot import name".
        raise NotProvidedError(f"purecompress does not provide {self.__name__}.{name} yet{hint}",
                               name=self.__name__)

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(self.__getattr__("__all__")))


class NniFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves every ``nni`` / ``nni.*`` import from :data:`MODULES` (and refuses the rest)."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        del path, target
        if fullname != "nni" and not fullname.startswith("nni."):
            return None
        if fullname not in MODULES:
            raise ModuleNotFoundError(f"purecompress does not provide {fullname!r} yet (the NNI shim serves "
                                      f"nni.compression.pytorch.* and nni.algorithms.compression.*; see "
                                      f"purecompress.compat._shim.MODULES)", name=fullname)
        return importlib.util.spec_from_loader(fullname, self, origin=__file__, is_package=True)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        return NniModule(spec.name, MODULES[spec.name])

    def exec_module(self, module: types.ModuleType) -> None:
        """Put every served name in the module's ``__dict__`` (scripts read ``vars(module)`` and
        ``module.__dict__[name]``, which never reach ``__getattr__``); the first source wins, as there."""
        module.__file__ = __file__
        if isinstance(module, NniModule):
            for source, names in module._served():
                for name in names:
                    module.__dict__.setdefault(name, getattr(source, name))


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

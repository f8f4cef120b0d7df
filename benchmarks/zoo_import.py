"""Import torchvision (and timm, which imports it) on the CPU build of torch.

The torchvision wheel on the package index is built against CUDA torch: its compiled extension
(``torchvision/_C.so``) links ``libtorch_cuda.so`` and does not load on the CPU wheel, and
``import torchvision`` then fails with ``operator torchvision::nms does not exist`` while it
registers fake kernels for the two detection ops it expects the extension to define. The
classification models never call those ops, so declaring their schemas first (no kernels: a call
raises) lets torchvision import and every classification model build and run::

    pip install torch==2.13.0            # the CPU wheel
    pip install torchvision==0.28.0 timm # torchvision's torch==2.13.0 pin is met by the CPU wheel

    from benchmarks.zoo_import import import_torchvision
    torchvision = import_torchvision()

Nothing is downloaded: build models with ``weights=None`` (torchvision) or ``pretrained=False``
(timm).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types
from pathlib import Path

import torch

# torchvision's _meta_registrations.py registers fake kernels for exactly these two schemas.
_DETECTION_OPS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_library: torch.library.Library | None = None


def declare_detection_ops() -> None:
    """Declare ``torchvision::nms``/``qnms`` (schemas only) unless something already defined them."""
    global _library
    if _library is not None or hasattr(torch.ops.torchvision, "nms") or _extension_loads():
        return
    if _library is not None:  # _extension_loads' find_spec ran the import hook, which declared them
        return
    # a FRAGMENT, not DEF: a second copy of this module (imported as ``zoo_import`` by a script and
    # as ``benchmarks.zoo_import`` by a package) finds the ops defined and leaves them
    library = torch.library.Library("torchvision", "FRAGMENT")
    for schema in _DETECTION_OPS:
        try:
            library.define(schema)
        except RuntimeError as err:
            if "already" not in str(err) and "multiple" not in str(err).lower():
                raise
    _library = library


def _extension_loads() -> bool:
    """Whether torchvision's compiled extension loads here (a CUDA torch): then it defines the real ops."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return False
    for folder in spec.submodule_search_locations:
        for candidate in sorted(Path(folder).glob("_C*.so")) + sorted(Path(folder).glob("_C*.pyd")):
            try:
                torch.ops.load_library(str(candidate))
            except (OSError, RuntimeError):
                return False
            return True
    return False


class _DeclareBeforeTorchvision(importlib.abc.MetaPathFinder):
    """Declares the detection ops the first time anything imports ``torchvision``, then steps aside."""

    def find_spec(self, name, path=None, target=None):  # noqa: D102 - the MetaPathFinder protocol
        if name == "torchvision":
            sys.meta_path.remove(self)
            declare_detection_ops()
        return None


def install_import_hook() -> None:
    """Make every later ``import torchvision`` (also from lightning, torchmetrics, timm) work on the CPU torch.

    Nothing happens when torchvision is not installed or was imported already.
    """
    if "torchvision" in sys.modules or importlib.util.find_spec("torchvision") is None:
        return
    if not any(isinstance(finder, _DeclareBeforeTorchvision) for finder in sys.meta_path):
        sys.meta_path.insert(0, _DeclareBeforeTorchvision())


def import_torchvision() -> types.ModuleType:
    """Return the ``torchvision`` module, declaring its detection ops first when the extension is absent.

    Raises:
        ImportError: torchvision is not installed.
    """
    declare_detection_ops()
    return importlib.import_module("torchvision")


def import_timm() -> types.ModuleType:
    """Return the ``timm`` module (which imports torchvision) on the CPU build of torch."""
    import_torchvision()
    return importlib.import_module("timm")

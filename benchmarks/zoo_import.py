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
import types

import torch

# torchvision's _meta_registrations.py registers fake kernels for exactly these two schemas.
_DETECTION_OPS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_library: torch.library.Library | None = None


def import_torchvision() -> types.ModuleType:
    """Return the ``torchvision`` module, declaring its detection ops first when the extension is absent.

    Raises:
        ImportError: torchvision is not installed.
    """
    global _library
    if _library is None and not hasattr(torch.ops.torchvision, "nms"):
        try:
            _library = torch.library.Library("torchvision", "DEF")
            for schema in _DETECTION_OPS:
                _library.define(schema)
        except RuntimeError:  # the real extension (or another caller) defined them meanwhile
            _library = None
    return importlib.import_module("torchvision")


def import_timm() -> types.ModuleType:
    """Return the ``timm`` module (which imports torchvision) on the CPU build of torch."""
    import_torchvision()
    return importlib.import_module("timm")

"""Graph capture (``torch.fx``) and the channel dependencies read from it."""

from __future__ import annotations

from .capture import PRODUCER_TYPES, GraphCaptureError, capture, is_captured
from .dependency import channel_dependency, group_dependency

__all__ = [
    "GraphCaptureError",
    "PRODUCER_TYPES",
    "capture",
    "channel_dependency",
    "group_dependency",
    "is_captured",
]

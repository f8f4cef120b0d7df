"""NNI's data collectors: what a pruner's metrics are computed from.

Same as ``nni...pruning.tools.data_collector`` (2.10) for the weight-only collector; collectors
that train or hook activations come with the training-aware pruners.
"""

from __future__ import annotations

import abc

from torch import Tensor

from purecompress.compat.base import Pruner

__all__ = ["DataCollector", "TargetDataCollector"]


class DataCollector(abc.ABC):
    """Abstract collector bound to a pruner (NNI calls it the compressor).

    Args:
        compressor: the pruner.
    """

    def __init__(self, compressor: Pruner) -> None:
        self.compressor = compressor

    @abc.abstractmethod
    def reset(self) -> None:
        """Forget collected state."""

    @abc.abstractmethod
    def collect(self) -> dict[str, dict[str, Tensor]]:
        """``{module: {target: data}}``."""


class TargetDataCollector(DataCollector):
    """The wrapped weights: ``{module: {'weight': tensor}}``.

    The tensors are detached views of the Parameters (NNI clones): the core never writes to its
    inputs, so no copy is needed.
    """

    def reset(self) -> None:
        """Nothing to forget."""

    def collect(self) -> dict[str, dict[str, Tensor]]:
        return {name: {"weight": wrapper.weight.detach()}
                for name, wrapper in self.compressor.get_modules_wrapper().items()}

"""Shared set-up of the compat tests: NNI (the oracle) logs a lot; keep it quiet."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _quiet_nni() -> Iterator[None]:
    """Silence NNI's loggers (NNI sets its own levels when imported, so do it per test)."""
    loggers = [logging.getLogger(name) for name in list(logging.root.manager.loggerDict)
               if name == "nni" or name.startswith("nni.")] + [logging.getLogger("nni")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    yield
    for lg, level in zip(loggers, levels):
        lg.setLevel(level)

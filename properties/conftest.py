"""Hypothesis profiles for the property suite.

``ci`` (the default) is derandomized, so every run checks the same examples and CI never flakes;
``dev`` explores with fresh random examples (``HYPOTHESIS_PROFILE=dev pytest properties``);
``hostile`` runs 400 fresh examples, for the malformed-config law 10^4 config lists
(``pytest properties/test_malformed_configs.py --hypothesis-profile=hostile``).
A profile named with ``--hypothesis-profile`` wins over ``HYPOTHESIS_PROFILE``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# Make `strategies` importable as a sibling module whether or not properties/ is a package.
sys.path.insert(0, str(Path(__file__).parent))

_COMMON = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large]}
settings.register_profile("ci", max_examples=40, derandomize=True, print_blob=True, **_COMMON)
settings.register_profile("dev", max_examples=300, **_COMMON)
settings.register_profile("hostile", max_examples=400, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_configure(config: pytest.Config) -> None:
    """Load ``--hypothesis-profile`` again: this conftest may be imported after Hypothesis's plugin
    read the option, and its ``load_profile`` above would otherwise replace the profile asked for."""
    profile = config.getoption("--hypothesis-profile", None)
    if profile:
        settings.load_profile(profile)

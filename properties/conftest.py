"""Hypothesis profiles for the property suite.

``ci`` (the default) is derandomized, so every run checks the same examples and CI never flakes;
``dev`` explores with fresh random examples (``HYPOTHESIS_PROFILE=dev pytest properties``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from hypothesis import HealthCheck, settings

# Make `strategies` importable as a sibling module whether or not properties/ is a package.
sys.path.insert(0, str(Path(__file__).parent))

_COMMON = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large]}
settings.register_profile("ci", max_examples=40, derandomize=True, print_blob=True, **_COMMON)
settings.register_profile("dev", max_examples=300, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

"""Property tests: the fast ``trioflow-dev`` hypothesis profile unless one is chosen.

Profiles are registered by the trioflow pytest plugin; ``--hypothesis-profile=ci`` runs more
examples.
"""

from __future__ import annotations

import pytest
from hypothesis import settings


def pytest_configure(config: pytest.Config) -> None:
    if not config.getoption("hypothesis_profile", None):
        settings.load_profile("trioflow-dev")

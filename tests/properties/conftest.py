"""Property tests: the fast ``trioflow-dev`` hypothesis profile unless one is chosen.

Profiles are registered by the trioflow pytest plugin; ``--hypothesis-profile=trioflow-ci``
runs more examples, and is what CI runs (``.ci/run`` sets ``CI``, and runs the README's plain
command).
"""

from __future__ import annotations

import os

import pytest
from hypothesis import settings


def pytest_configure(config: pytest.Config) -> None:
    if not config.getoption("hypothesis_profile", None):
        settings.load_profile("trioflow-ci" if os.environ.get("CI") else "trioflow-dev")

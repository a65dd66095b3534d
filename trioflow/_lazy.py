"""Optional dependencies, imported when a connector is used, with an error naming the extra."""

from __future__ import annotations

import importlib
from types import ModuleType


def require(module: str, extra: str) -> ModuleType:
    """Import ``module`` or raise ``ImportError`` saying which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"this connector needs {module!r}: install it with pip install 'trioflow[{extra}]'"
        ) from exc

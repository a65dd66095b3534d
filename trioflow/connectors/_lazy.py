"""Optional dependencies of connectors (see ``trioflow._lazy``)."""

from .._lazy import require as require

__all__ = ["require"]

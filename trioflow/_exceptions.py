"""Exceptions raised by trioflow.

The tree::

    Exception
    ├── TrioflowError                   base of everything trioflow raises itself
    │   ├── PipelineError               run() stopped: a bug or a Fatal escaped a stage
    │   ├── InvalidPipeline (ValueError)  the graph cannot run (no source, two sources, ...)
    │   └── StageTimeout (TimeoutError)   reason of an item whose call exceeded ``timeout``
    └── Fatal                           raised (or wrapped) by user code to stop the pipeline

Argument validation raises the builtins ``ValueError`` and ``TypeError`` directly, when the stage
is built, with a message naming the argument and the value (``"n=0 must be a positive integer"``).

User failures are data, not exceptions: an exception raised by a stage function fails that item
(its ``Message.reason``) and the pipeline goes on.
"""

from __future__ import annotations

from typing import final

__all__ = ["Fatal", "InvalidPipeline", "PipelineError", "StageTimeout", "TrioflowError"]


class TrioflowError(Exception):
    """Base class of the errors trioflow raises itself."""


@final
class PipelineError(TrioflowError):
    """A pipeline stopped because of a bug or a :class:`Fatal` error.

    ``stage`` names the stage (or the internal task: ``"acknowledger"``, ``"on_failure"``) the
    exception escaped from; the exception itself is ``__cause__``.
    """

    def __init__(self, stage: str, message: str) -> None:
        super().__init__(message)
        self.stage = stage


@final
class InvalidPipeline(TrioflowError, ValueError):
    """The pipeline cannot run as composed: no source, two sources, a stage after a sink..."""


@final
class StageTimeout(TrioflowError, TimeoutError):
    """The reason given to an item whose stage call took longer than the stage's ``timeout``."""


class Fatal(Exception):
    """Raise (or wrap) to stop the whole pipeline instead of failing one item.

    Examples:
        >>> async def save(rows):
        ...     try:
        ...         await db.insert(rows)
        ...     except AuthenticationError as exc:
        ...         raise Fatal("database credentials rejected") from exc
    """

"""Test kit: recording sources, invariant checks, and hypothesis strategies (docs/testing.md).

* :class:`TestSource`, :func:`record`, :class:`RecordingAcknowledger`: sources whose outcomes
  are recorded, every item acked exactly once or the test fails.
* :class:`PushSource`, :func:`test_message`, :func:`test_batch`: push items into a running
  pipeline and await their outcome.
* :func:`check_pipeline`: run a pipeline under a ``MockClock`` and assert trioflow's invariants.
* :func:`stages`, :func:`pipelines`, :func:`failures`, :func:`tokens`: hypothesis strategies
  (need ``hypothesis``).

Examples:
    >>> from trioflow.testing import TestSource, check_pipeline
    >>> check_pipeline(process(double), [1, 2, 3], model=lambda xs: [2 * x for x in xs])
"""

import typing as _typing

from ._check import CheckResult as CheckResult
from ._check import Expected as Expected
from ._check import InvariantViolation as InvariantViolation
from ._check import check_pipeline as check_pipeline
from ._check import check_pipeline_async as check_pipeline_async
from ._graph import FailurePlan as FailurePlan
from ._graph import Fault as Fault
from ._graph import Graph as Graph
from ._graph import PlannedFailure as PlannedFailure
from ._graph import Token as Token
from ._graph import tokens_of as tokens_of
from ._push import Outcome as Outcome
from ._push import PushSource as PushSource
from ._push import test_batch as test_batch
from ._push import test_message as test_message
from ._source import AckedTwice as AckedTwice
from ._source import InFlightMeter as InFlightMeter
from ._source import RecordedSource as RecordedSource
from ._source import RecordingAcknowledger as RecordingAcknowledger
from ._source import TestSource as TestSource
from ._source import record as record

if _typing.TYPE_CHECKING:
    from ._strategies import failures as failures
    from ._strategies import pipelines as pipelines
    from ._strategies import retries as retries
    from ._strategies import stages as stages
    from ._strategies import tokens as tokens

_STRATEGIES = ("failures", "pipelines", "retries", "stages", "tokens")

__all__ = [
    "AckedTwice",
    "check_pipeline",
    "check_pipeline_async",
    "CheckResult",
    "Expected",
    "FailurePlan",
    "Fault",
    "Graph",
    "InFlightMeter",
    "InvariantViolation",
    "Outcome",
    "PlannedFailure",
    "PushSource",
    "record",
    "RecordedSource",
    "RecordingAcknowledger",
    "test_batch",
    "test_message",
    "TestSource",
    "Token",
    "tokens_of",
    *_STRATEGIES,
]


def __getattr__(name: str) -> _typing.Any:
    # strategies need hypothesis, an optional (test) dependency: import it on first use
    if name in _STRATEGIES:
        try:
            from . import _strategies
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError(
                f"trioflow.testing.{name} needs hypothesis: pip install 'trioflow[test]'"
            ) from exc
        return getattr(_strategies, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

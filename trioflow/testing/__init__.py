"""Test kit: recording sources, invariant checks, and hypothesis strategies (docs/testing.md).

* :class:`TestSource`, :func:`record`, :class:`RecordingAcknowledger`: sources whose outcomes
  are recorded, every item acked exactly once or the test fails.
* :class:`PushSource`, :func:`test_message`, :func:`test_batch`: push items into a running
  pipeline and await their outcome.
* :func:`check_pipeline`: run a pipeline under a ``MockClock`` and assert trioflow's invariants.
* :func:`stages`, :func:`pipelines`, :func:`failures`, :func:`tokens`: hypothesis strategies
  (need ``hypothesis``).
* :class:`SimulatedBroker`: an in-memory broker (partitions, consumer groups, leases, dead
  letters) with faults (:class:`CrashConsumer`, :class:`DuplicateDelivery`,
  :class:`RestartBroker`, :class:`DelayAcks`, :class:`SlowPartition`), and
  :func:`check_service` that runs a service through them and checks it; the strategies
  :func:`fault_schedules` and :func:`faults` draw schedules; :class:`SimulatedRedis` is a Redis
  Streams client over the broker, to run the real ``RedisStreamSource`` through the faults.

Examples:
    >>> from trioflow.testing import TestSource, check_pipeline
    >>> check_pipeline(process(double), [1, 2, 3], model=lambda xs: [2 * x for x in xs])
"""

import importlib as _importlib
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
from ._service import check_service as check_service
from ._service import check_service_async as check_service_async
from ._service_types import BrokenInvariant as BrokenInvariant
from ._service_types import ServiceExpect as ServiceExpect
from ._service_types import ServiceResult as ServiceResult
from ._service_types import ServiceViolation as ServiceViolation
from ._sim_faults import BrokerFault as BrokerFault
from ._sim_faults import CrashConsumer as CrashConsumer
from ._sim_faults import DelayAcks as DelayAcks
from ._sim_faults import DuplicateDelivery as DuplicateDelivery
from ._sim_faults import RestartBroker as RestartBroker
from ._sim_faults import SlowPartition as SlowPartition
from ._sim_model import ConsumerCrashed as ConsumerCrashed
from ._sim_model import Published as Published
from ._sim_rabbit import SimulatedRabbit as SimulatedRabbit
from ._sim_redis import SimulatedRedis as SimulatedRedis
from ._sim_source import SimulatedSource as SimulatedSource
from ._simulated import SimulatedBroker as SimulatedBroker
from ._source import AckedTwice as AckedTwice
from ._source import InFlightMeter as InFlightMeter
from ._source import RecordedSource as RecordedSource
from ._source import RecordingAcknowledger as RecordingAcknowledger
from ._source import TestSource as TestSource
from ._source import record as record

if _typing.TYPE_CHECKING:
    from ._sim_strategies import fault_schedules as fault_schedules
    from ._sim_strategies import faults as faults
    from ._strategies import failures as failures
    from ._strategies import pipelines as pipelines
    from ._strategies import retries as retries
    from ._strategies import stages as stages
    from ._strategies import tokens as tokens

_STRATEGIES = (
    "failures",
    "fault_schedules",
    "faults",
    "pipelines",
    "retries",
    "stages",
    "tokens",
)
_SIM_STRATEGIES = ("fault_schedules", "faults")

__all__ = [
    "AckedTwice",
    "BrokenInvariant",
    "BrokerFault",
    "CheckResult",
    "ConsumerCrashed",
    "CrashConsumer",
    "DelayAcks",
    "DuplicateDelivery",
    "Expected",
    "FailurePlan",
    "Fault",
    "Graph",
    "InFlightMeter",
    "InvariantViolation",
    "Outcome",
    "PlannedFailure",
    "Published",
    "PushSource",
    "RecordedSource",
    "RecordingAcknowledger",
    "RestartBroker",
    "ServiceExpect",
    "ServiceResult",
    "ServiceViolation",
    "SimulatedBroker",
    "SimulatedRabbit",
    "SimulatedRedis",
    "SimulatedSource",
    "SlowPartition",
    "TestSource",
    "Token",
    "check_pipeline",
    "check_pipeline_async",
    "check_service",
    "check_service_async",
    "failures",
    "fault_schedules",
    "faults",
    "pipelines",
    "record",
    "retries",
    "stages",
    "test_batch",
    "test_message",
    "tokens",
    "tokens_of",
]


def __getattr__(name: str) -> _typing.Any:
    # strategies need hypothesis, an optional (test) dependency: import it on first use
    if name in _STRATEGIES:
        try:
            module = _importlib.import_module(
                "._sim_strategies" if name in _SIM_STRATEGIES else "._strategies", __name__
            )
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError(
                f"trioflow.testing.{name} needs hypothesis: pip install 'trioflow[testing]'"
            ) from exc
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

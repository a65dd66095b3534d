"""Hypothesis strategies for :class:`~trioflow.testing.SimulatedBroker` fault schedules.

Schedules shrink towards fewer faults, earlier points (``after`` towards 0), shorter delays, and
crashes before the other kinds, so a failing schedule reduces to the few faults that matter.
"""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import strategies as st

from ._sim_faults import (
    BrokerFault,
    CrashConsumer,
    DelayAcks,
    DuplicateDelivery,
    RestartBroker,
    SlowPartition,
)

__all__ = ["fault_schedules", "faults"]


def faults(
    consumers: Sequence[str] = ("c0",),
    *,
    messages: int = 20,
    partitions: int = 1,
    max_delay: float = 10.0,
    kinds: Sequence[type] | None = None,
) -> st.SearchStrategy[BrokerFault]:
    """One fault of a schedule: a crash of one of ``consumers``, a duplicate delivery of one of
    the first ``messages`` messages, a broker restart, delayed acks or a slow partition (of
    ``partitions``), each at a point within the first ``2 * messages`` deliveries. Delays stay
    within ``max_delay`` seconds: keep it below the broker's visibility timeout, or the kit
    rightly reports the duplicates that expired leases cause. ``kinds`` limits the fault
    classes.

    Example:
        >>> faults(["c0", "c1"], messages=50, kinds=[CrashConsumer, RestartBroker])
    """
    if not consumers:
        raise ValueError("faults: consumers must name at least one consumer")
    points = st.integers(0, max(1, 2 * messages))
    delays = st.floats(0.0, max_delay, allow_nan=False, allow_infinity=False).map(
        lambda x: round(x, 2)
    )
    names = st.sampled_from(list(consumers))
    options: dict[type, st.SearchStrategy[BrokerFault]] = {
        CrashConsumer: st.builds(CrashConsumer, consumer=names, after=points),
        DuplicateDelivery: st.builds(
            DuplicateDelivery, message=st.integers(0, max(0, messages - 1))
        ),
        RestartBroker: st.builds(RestartBroker, after=points, downtime=delays),
        DelayAcks: st.builds(DelayAcks, seconds=delays, after=points, consumer=st.none() | names),
        SlowPartition: st.builds(
            SlowPartition,
            partition=st.integers(0, max(0, partitions - 1)),
            seconds=delays,
            after=points,
        ),
    }
    chosen = [options[k] for k in (kinds or list(options))]
    return st.one_of(chosen)


def fault_schedules(
    consumers: Sequence[str] = ("c0",),
    *,
    messages: int = 20,
    partitions: int = 1,
    max_faults: int = 4,
    max_delay: float = 10.0,
    kinds: Sequence[type] | None = None,
) -> st.SearchStrategy[list[BrokerFault]]:
    """Fault schedules: lists of up to ``max_faults`` :func:`faults` (same arguments), for
    ``check_service(..., faults=schedule)``.

    Example:
        >>> @given(fault_schedules(["c0", "c1"], messages=30))
        ... def test_orders_survive(schedule):
        ...     check_service(build, fresh_broker(), "orders", expect=[], faults=schedule,
        ...                   consumers=2)
    """
    one = faults(
        consumers, messages=messages, partitions=partitions, max_delay=max_delay, kinds=kinds
    )
    return st.lists(one, max_size=max_faults)

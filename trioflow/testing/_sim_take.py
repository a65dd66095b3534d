"""How a :class:`~trioflow.testing.SimulatedBroker` hands out a chunk of deliveries: the lease
of each message, redeliveries first, duplicates and slow partitions, and a fault due at a
delivery ending the chunk so that it fires exactly there."""

from __future__ import annotations

# pyright: reportPrivateUsage=false
# (a collaborator of SimulatedBroker: it reads and books the broker's private state)
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ._sim_model import Published, Receipt, sim_now

if TYPE_CHECKING:
    from ._simulated import SimulatedBroker

__all__ = ["take"]


def take(
    broker: SimulatedBroker,
    topic: str,
    group: str,
    consumer: str,
    count: int,
    partitions: Sequence[int] | None,
) -> list[tuple[Published, int, Receipt]]:
    """Lease up to ``count`` visible messages to ``consumer``: (message, delivery count,
    receipt) each."""
    now = sim_now()
    if now < broker._down_until:
        return []
    g = broker._group(topic, group)
    broker._expire(g, now)
    logs = g.topic.logs
    n = len(logs)
    start = broker._rng.randrange(n)
    order = [(start + i) % n for i in range(n)]
    if partitions is not None:
        order = [p for p in order if p in partitions]
    key = (topic, group, consumer)
    gen = broker._generation.get(key, 0)
    held = broker._outstanding.setdefault(key, {})
    taken: list[tuple[Published, int, Receipt]] = []
    again: list[tuple[int, int]] = []
    due = False
    for p in order:
        if len(taken) >= count or due:
            break
        if g.ready_at[p] > now:
            continue
        before = len(taken)
        log = logs[p]
        while len(taken) < count and not due:
            returned, forced = g.returned[p], g.forced[p]
            is_forced = bool(forced)
            if forced:
                offset = min(forced)
                forced.discard(offset)
                returned.discard(offset)
            elif returned:
                offset = min(returned)
                returned.discard(offset)
            elif g.cursor[p] < len(log):
                offset = g.cursor[p]
                g.cursor[p] += 1
            else:
                break
            msg = log[offset]
            st = g.state(msg.id)
            if st.outcome is not None and not is_forced:
                continue
            st.deliveries += 1
            if st.outcome is None:
                st.owner = consumer
                st.lease_until = now + broker.visibility_timeout
                g.leased[msg.id] = st
            held[msg.id] = st.deliveries
            taken.append((msg, st.deliveries, (msg.id, st.deliveries, gen)))
            broker.deliveries += 1
            if msg.id in broker._dup_ids:
                broker._dup_ids.discard(msg.id)
                broker.duplicated.add((topic, msg.id))
                again.append((p, offset))
            # a fault due at this delivery ends the chunk, so it fires exactly here
            due = broker._due(topic, group, consumer, len(taken))
        slow = broker._slow.get((topic, p))
        if slow is not None and len(taken) > before:
            g.ready_at[p] = now + slow
    for p, offset in again:
        g.forced[p].add(offset)
        broker._record(now, "duplicate", logs[p][offset].id)
    if taken:
        broker._record(
            now,
            "deliver",
            f"{group}/{consumer}: " + " ".join(f"{m.id}#{d}" for m, d, _ in taken),
        )
        broker._count_deliveries(topic, group, consumer, len(taken))
        broker._fire(now)
    return taken

"""Protocols and base classes for connector and instrument authors.

* :class:`Source`: subclass it and implement ``produce(outlet)`` to write a source connector;
  the :class:`Outlet` says how much the pipeline can take (``demand()``) and takes items.
* :class:`Acknowledger`: what a source attaches to its messages to learn their outcome;
  :class:`BulkAcknowledger` also takes successful messages by id (``Outlet.send_bulk``).
* :class:`Instrument`: telemetry hooks, all no-ops by default.
"""

from ._bulk import BulkAcknowledger as BulkAcknowledger
from ._message import Acknowledger as Acknowledger
from ._message import NoopAcknowledger as NoopAcknowledger
from ._sources import Outlet as Outlet
from ._sources import Source as Source
from ._telemetry import Instrument as Instrument

__all__ = [
    "Acknowledger",
    "BulkAcknowledger",
    "Instrument",
    "NoopAcknowledger",
    "Outlet",
    "Source",
]

"""Sources and sinks for real systems, each with its system's acknowledgement semantics.

* :mod:`trioflow.connectors.jsonl`: JSON-lines files, with a checkpoint that resumes a run.
* :mod:`trioflow.connectors.sqlite`: SQLite batch sink (stdlib ``sqlite3`` in a worker thread).

Connectors depend on the core, never the reverse; those that need a client library import it
lazily and name the extra to install when it is missing.

:class:`Reconnect` is the reconnect policy of the broker sources (Redis Streams, RabbitMQ).
"""

from ._reconnect import Reconnect as Reconnect
from ._reconnect import SourceUnavailable as SourceUnavailable

__all__ = ["Reconnect", "SourceUnavailable"]

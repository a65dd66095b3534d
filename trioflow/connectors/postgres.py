"""PostgreSQL batch sink: psycopg 3's sync connection in worker threads, a small pool.

psycopg's ``AsyncConnection`` does not run under trio; its sync connection does, in
``trio.to_thread``, and keeps the event loop responsive. Install with
``pip install 'trioflow[postgres]'``.

* ``mode="copy"``: plain inserts with ``COPY`` (fastest; a duplicate key fails the batch);
  ``"upsert"``: ``INSERT ... ON CONFLICT (key) DO UPDATE`` (redelivery is harmless);
  ``"ignore"``: ``ON CONFLICT DO NOTHING``; ``"insert"``: plain ``executemany``.
  One transaction per batch.
* Transient errors (connection lost, server restarting, serialization failure, deadlock) are
  retried with backoff on a fresh connection for up to ``retry_deadline`` seconds (30 by
  default: a server restart or a quick failover passes unnoticed, nothing is dead-lettered);
  permanent ones (constraint, type, missing column) fail only the batch's messages, with the
  database's message as the reason (:class:`DatabaseError`). Each retry is counted in the run's
  ``report.retried`` (Prometheus ``trioflow_retried``) and reaches instruments as a ``retry``
  event of the sink's stage.
* Cancelling a call (a hard stop) cancels the running query on the server, and the connection
  is discarded rather than reused.

Examples:
    >>> save = PostgresSink("host=127.0.0.1 dbname=app", "invoices", key="id")
    >>> async with save:
    ...     await (source | decode(Invoice) | batch(500, 1.0) | sink(save)).run()
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, cast, final

import attrs
import trio

from .._exceptions import TrioflowError
from .._operators._context import note_retry
from .._retry import Backoff, Retry
from ._json import is_attrs, items_of
from ._lazy import require

__all__ = ["DatabaseError", "PostgresSink", "TransientDatabaseError"]

Mode = Literal["copy", "insert", "ignore", "upsert"]

#: The default retry: waits of 0.1, 0.2, 0.4 ... capped at 2 s, jittered (many sinks coming back
#: at once do not all knock at the same instant); ``retry_deadline`` is what bounds it.
DEFAULT_RETRY = Retry(attempts=1000, backoff=Backoff.exponential(0.1, max=2.0, jitter=True))
#: Seconds a batch keeps being retried: a restart takes seconds (3 s measured here), a failover
#: of a managed or Patroni cluster tens of seconds; longer outages are a circuit breaker's job.
DEFAULT_RETRY_DEADLINE = 30.0


class DatabaseError(TrioflowError):
    """A batch could not be written; the message is the database's."""


@final
class TransientDatabaseError(DatabaseError):
    """A transient error outlasted the sink's retries."""


def _row(item: Any) -> Mapping[str, Any]:
    if isinstance(item, Mapping):
        return cast("Mapping[str, Any]", item)
    if is_attrs(item):
        return attrs.asdict(item, recurse=False)
    raise TypeError(
        f"PostgresSink: cannot store {type(item).__name__}; give dicts or attrs objects"
    )


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@final
class PostgresSink:
    """Write batches of rows (dicts or attrs objects) to ``table`` (see the module docs).

    ``retry`` sets the attempts and the backoff between them for transient errors (default:
    exponential from 0.1 s, capped at 2 s, jittered); ``retry_deadline`` bounds the seconds one
    batch spends in them, counted from its first attempt (default 30 s; ``None``: only
    ``retry.attempts`` bounds them). A ``retry`` with its own ``deadline`` wins over
    ``retry_deadline``: ``Retry(deadline=120.0)`` is the same as ``retry_deadline=120.0``. The
    last wait is cut short to end at the deadline, where one more attempt is made; then the
    batch fails with :class:`TransientDatabaseError`. While a
    batch waits, its worker slot is held, so back-pressure reaches the sources (a broker keeps
    the messages; nothing is pulled meanwhile).

    Examples:
        >>> PostgresSink(dsn, "invoices", key="id", retry_deadline=120.0)  # ride out a failover
        >>> PostgresSink(dsn, "invoices", key="id", retry=tf.Retry(attempts=50, deadline=120.0))
    """

    def __init__(
        self,
        dsn: str,
        table: str,
        *,
        key: str | Sequence[str] | None = None,
        columns: Sequence[str] | None = None,
        mode: Mode = "upsert",
        pool_size: int = 2,
        retry: Retry | None = None,
        retry_deadline: float | None = DEFAULT_RETRY_DEADLINE,
        connect: Callable[[], Any] | None = None,
    ) -> None:
        if mode not in ("copy", "insert", "ignore", "upsert"):
            raise ValueError(f"mode={mode!r} must be 'copy', 'insert', 'ignore' or 'upsert'")
        if mode == "upsert" and not key:
            raise ValueError("mode='upsert' needs key= (the column(s) that identify a row)")
        if pool_size < 1:
            raise ValueError(f"pool_size={pool_size!r} must be a positive integer")
        if retry_deadline is not None and (
            not isinstance(retry_deadline, (int, float))
            or isinstance(retry_deadline, bool)
            or not retry_deadline >= 0
        ):
            raise ValueError(
                f"retry_deadline={retry_deadline!r} must be a non-negative number or None"
            )
        self.dsn = dsn
        self.table = table
        self.key: tuple[str, ...] = (key,) if isinstance(key, str) else tuple(key or ())
        self.columns: tuple[str, ...] | None = tuple(columns) if columns is not None else None
        self.mode = mode
        self.retry: Retry = retry or DEFAULT_RETRY
        #: the bound in force: the ``retry``'s own deadline if it has one, else ``retry_deadline``
        self.retry_deadline: float | None = (
            self.retry.deadline if self.retry.deadline is not None else (retry_deadline)
        )
        self._connect = connect
        self._idle: list[Any] = []
        self._limit = trio.Semaphore(pool_size)
        self._lock = threading.Lock()
        self.rows_written: int = 0
        self.retried: int = 0

    async def __call__(self, item: Any) -> None:
        rows = [_row(x) for x in items_of(item)]
        if not rows:
            return
        psycopg = require("psycopg", "postgres")
        errors = psycopg.errors
        transient = (psycopg.OperationalError, errors.SerializationFailure, errors.DeadlockDetected)
        attempt = 1
        started = trio.current_time()
        deadline = started + self.retry_deadline if self.retry_deadline is not None else None
        while True:
            try:
                await self._write(rows)
                return
            except transient as exc:
                now = trio.current_time()
                if attempt >= self.retry.attempts or (deadline is not None and now >= deadline):
                    raise TransientDatabaseError(
                        f"{self.table}: {_message(exc)} "
                        f"(after {attempt} attempts in {now - started:.1f} s)"
                    ) from exc
                # the last wait ends at the deadline itself, where one more attempt is made
                until = now + self.retry.backoff.delay(attempt)
                if deadline is not None:
                    until = min(until, deadline)
                self.retried += 1
                note_retry(item, attempt + 1, exc, until - now)
                await trio.sleep_until(until)
                attempt += 1
            except psycopg.Error as exc:
                raise DatabaseError(f"{self.table}: {_message(exc)}") from exc

    async def _write(self, rows: list[Mapping[str, Any]]) -> None:
        async with self._limit:
            conn: Any = self._idle.pop() if self._idle else None
            if conn is None or conn.closed:
                conn = await trio.to_thread.run_sync(self._open)
            abandoned = threading.Event()

            def work() -> None:
                try:
                    self._write_sync(conn, rows)
                finally:
                    if abandoned.is_set():
                        conn.close()

            reuse = False
            try:
                await trio.to_thread.run_sync(work, abandon_on_cancel=True)
                reuse = True
            except trio.Cancelled:
                abandoned.set()
                # stop the query on the server; best effort, the connection is dropped anyway
                with contextlib.suppress(Exception):
                    conn.cancel_safe(timeout=2.0)
                raise
            finally:
                if reuse and not conn.broken:
                    self._idle.append(conn)
                elif not abandoned.is_set():
                    conn.close()
            self.rows_written += len(rows)

    def _open(self) -> Any:
        if self._connect is not None:
            return self._connect()
        psycopg = require("psycopg", "postgres")
        return psycopg.connect(self.dsn, autocommit=False)

    def _write_sync(self, conn: Any, rows: list[Mapping[str, Any]]) -> None:
        columns = self.columns or tuple(rows[0])
        values = [tuple(r[c] for c in columns) for r in rows]
        cols = ", ".join(_ident(c) for c in columns)
        table = _ident(self.table)
        try:
            with conn.cursor() as cur:
                if self.mode == "copy":
                    with cur.copy(f"COPY {table} ({cols}) FROM STDIN") as copy:
                        for v in values:
                            copy.write_row(v)
                else:
                    marks = ", ".join(["%s"] * len(columns))
                    sql = f"INSERT INTO {table} ({cols}) VALUES ({marks})"
                    if self.mode == "ignore":
                        sql += " ON CONFLICT DO NOTHING"
                    elif self.mode == "upsert":
                        keys = ", ".join(_ident(k) for k in self.key)
                        sets = ", ".join(
                            f"{_ident(c)} = EXCLUDED.{_ident(c)}"
                            for c in columns
                            if c not in self.key
                        )
                        sql += f" ON CONFLICT ({keys}) DO " + (
                            f"UPDATE SET {sets}" if sets else "NOTHING"
                        )
                    cur.executemany(sql, values)
            conn.commit()
        except BaseException:
            if not conn.closed:
                with contextlib.suppress(Exception):  # a broken one is closed by the caller
                    conn.rollback()
            raise

    async def aclose(self) -> None:
        """Close the pooled connections (idempotent)."""
        idle, self._idle = self._idle, []
        with trio.CancelScope(shield=True):
            for conn in idle:
                await trio.to_thread.run_sync(conn.close)

    async def __aenter__(self) -> PostgresSink:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @property
    def __name__(self) -> str:  # for reprs: sink(PostgresSink(...))
        return f"PostgresSink({self.table})"


def _message(exc: BaseException) -> str:
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None) if diag is not None else None
    detail = getattr(diag, "message_detail", None) if diag is not None else None
    text = primary or str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"{text} ({detail})" if detail else str(text)

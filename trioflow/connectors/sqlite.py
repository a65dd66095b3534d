"""SQLite batch sink: stdlib ``sqlite3`` in a worker thread, one transaction per batch.

The connection uses WAL and ``synchronous=NORMAL`` (durable across a process crash; the last
transactions may be lost on power loss). ``mode="upsert"`` (with ``key``) or ``mode="ignore"`` make
redelivery harmless, which is what at-least-once sources need.

Examples:
    >>> save = SqliteSink("out.db", "invoices", key="id")
    >>> pipeline = source | decode(Invoice) | batch(500, 1.0) | sink(save)
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, cast, final

import attrs
import trio

from ._json import is_attrs, items_of

__all__ = ["SqliteSink"]

Mode = Literal["insert", "ignore", "upsert"]


def _row(item: Any) -> Mapping[str, Any]:
    if isinstance(item, Mapping):
        return cast("Mapping[str, Any]", item)
    if is_attrs(item):
        return attrs.asdict(item, recurse=False)
    raise TypeError(f"SqliteSink: cannot store {type(item).__name__}; give dicts or attrs objects")


@final
class SqliteSink:
    """Insert batches of rows (dicts or attrs objects) into ``table``.

    Call it with a batch (a list) or a single row. ``columns`` defaults to the first row's keys.
    With ``create=True`` the table is created if missing (columns untyped, ``key`` the primary
    key). The connection opens on first use; :meth:`aclose` (or ``async with``) closes it.
    A call holds a lock: concurrent workers are safe, and serialize.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        table: str,
        *,
        key: str | Sequence[str] | None = None,
        columns: Sequence[str] | None = None,
        mode: Mode = "upsert",
        create: bool = True,
        busy_timeout: float = 30.0,
    ) -> None:
        if mode not in ("insert", "ignore", "upsert"):
            raise ValueError(f"mode={mode!r} must be 'insert', 'ignore' or 'upsert'")
        if mode == "upsert" and key is None:
            raise ValueError("mode='upsert' needs key= (the column(s) that identify a row)")
        _check_identifier("table", table)
        self.path: Path = Path(path)
        self.table = table
        self.key: tuple[str, ...] = (key,) if isinstance(key, str) else tuple(key or ())
        for k in self.key:
            _check_identifier("key", k)
        self.columns: tuple[str, ...] | None = tuple(columns) if columns is not None else None
        self.mode = mode
        self.create: bool = create
        self.busy_timeout = busy_timeout
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self.rows_written: int = 0

    async def __call__(self, item: Any) -> None:
        rows = [_row(x) for x in items_of(item)]
        if rows:
            await trio.to_thread.run_sync(self._write, rows)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        # several processes may share the file (scale-out): wait for the writer lock
        conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout * 1000)}")
        return conn

    def _write(self, rows: list[Mapping[str, Any]]) -> None:
        with self._lock:
            if self._conn is None:
                self._conn = self._connect()
            conn = self._conn
            columns = self.columns or tuple(rows[0])
            for c in columns:
                _check_identifier("column", c)
            if self.create:
                self._create(conn, columns)
            sql = self._insert_sql(columns)
            values = [tuple(r[c] for c in columns) for r in rows]
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(sql, values)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:  # a failed COMMIT leaves it open: the next BEGIN would fail
                    conn.execute("ROLLBACK")
                raise
            self.rows_written += len(rows)

    def _create(self, conn: sqlite3.Connection, columns: tuple[str, ...]) -> None:
        cols = ", ".join(f'"{c}"' for c in columns)
        pk = f", PRIMARY KEY ({', '.join(f'{k!r}' for k in self.key)})" if self.key else ""
        pk = pk.replace("'", '"')
        conn.execute(f'CREATE TABLE IF NOT EXISTS "{self.table}" ({cols}{pk})')
        self.create = False

    def _insert_sql(self, columns: tuple[str, ...]) -> str:
        cols = ", ".join(f'"{c}"' for c in columns)
        marks = ", ".join("?" for _ in columns)
        verb = "INSERT OR IGNORE" if self.mode == "ignore" else "INSERT"
        sql = f'{verb} INTO "{self.table}" ({cols}) VALUES ({marks})'
        if self.mode == "upsert":
            keys = ", ".join(f'"{k}"' for k in self.key)
            updates = ", ".join(f'"{c}" = excluded."{c}"' for c in columns if c not in self.key)
            action = f"UPDATE SET {updates}" if updates else "NOTHING"
            sql += f" ON CONFLICT ({keys}) DO {action}"
        return sql

    async def aclose(self) -> None:
        """Close the connection (idempotent)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(conn.close)

    async def __aenter__(self) -> SqliteSink:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @property
    def __name__(self) -> str:  # for reprs: sink(SqliteSink(...))
        return f"SqliteSink({self.path.name}:{self.table})"

    def __repr__(self) -> str:
        return f"SqliteSink({str(self.path)!r}, {self.table!r})"


def _check_identifier(what: str, name: str) -> None:
    if not name or not name.replace("_", "a").isalnum():
        raise ValueError(f"{what}={name!r} must be a plain SQL identifier (letters, digits, _)")

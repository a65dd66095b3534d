"""JSON-lines files: a source that checkpoints what was acked, and a sink that appends.

The source reads lines in chunks that follow demand (in a worker thread, so the event loop never
waits on the disk). Each message carries ``metadata["line"]`` (1-based) and ``metadata["offset"]``
(its byte offset). Its acknowledger advances a checkpoint file to the end of the last *contiguous*
settled line (successful or failed: failures are the failure handler's business), written
atomically, so a restarted run resumes after the last line whose fate was decided and loses
nothing; lines after a gap are read again (at-least-once).

No line can stop the source: one that is not JSON, one nested too deeply for the parser, and one
longer than ``max_line_bytes`` (which is skipped up to its newline without being held in memory)
each become a failed message, so the checkpoint moves past it like past any settled line.

Examples:
    >>> source = JsonlSource("events.jsonl", checkpoint="events.checkpoint")
    >>> pipeline = source | decode(Event) | batch(500, 1.0) | sink(SqliteSink("out.db", "events"))
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, ClassVar, final

import trio

from .._decode import nesting_too_deep
from .._exceptions import TrioflowError
from .._message import Message
from .._message import reason_text as _reason_text
from .._sources import Outlet, Source
from .._validate import describe
from ._json import is_attrs, items_of

__all__ = ["JsonlSink", "JsonlSource", "LineTooLong", "read_checkpoint"]

#: at most this many lines per read from the file (and per hand-over) ...
_CHUNK = 512
#: ... and, past the first line, at most about this many bytes: a chunk of long lines is short
_CHUNK_BYTES = 1 << 20
#: a line over the limit is discarded in pieces of this size, never held whole
_SKIP_BLOCK = 1 << 20
#: how much of an over-long line its failed message keeps as data (to recognise it)
_HEAD = 256

#: the default ``max_line_bytes``: 4 MiB
MAX_LINE_BYTES = 4 << 20


@final
class LineTooLong(TrioflowError, ValueError):
    """A line longer than the source's ``max_line_bytes``: the reason of its failed message."""


def read_checkpoint(path: str | os.PathLike[str]) -> int:
    """The byte offset stored in a checkpoint file (0 when it does not exist)."""
    try:
        text = Path(path).read_text().strip()
    except FileNotFoundError:
        return 0
    return int(text) if text else 0


def _write_checkpoint(path: Path, offset: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(f"{offset}\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@final
class _Checkpointer:
    """Acknowledger of a JSONL source: moves the checkpoint over contiguous settled lines."""

    def __init__(self, path: Path | None, start: int) -> None:
        self.path = path
        self.committed = start  # byte offset of the first line not yet settled
        self._done: dict[int, int] = {}  # offset -> end offset of settled lines past a gap
        # the acker and the source (blank lines) both ack: one checkpoint write at a time
        self._writing = trio.Lock()

    async def ack(self, successful: list[Message[Any]], failed: list[Message[Any]]) -> None:
        for m in successful:
            self._done[m.metadata["offset"]] = m.metadata["end"]
        for m in failed:
            self._done[m.metadata["offset"]] = m.metadata["end"]
        moved = False
        while self.committed in self._done:
            self.committed = self._done.pop(self.committed)
            moved = True
        if moved and self.path is not None:
            async with self._writing:
                # the latest offset: a write that waited covers what others moved meanwhile
                await trio.to_thread.run_sync(_write_checkpoint, self.path, self.committed)


@final
class JsonlSource(Source[Any]):
    """Lines of a JSON-lines file, decoded with ``json.loads`` (or given raw with ``raw=True``).

    A line that is not valid JSON is handed over as its text in a message already failed
    (reason: the JSON error, or a :class:`~trioflow.DecodeError` "nesting too deep" for a
    document nested beyond what the parser follows), so it reaches the failure handler and never
    stops the run. ``checkpoint`` names the file that records progress; without it every run
    reads from the start. Blank lines are skipped (and counted as settled).

    ``max_line_bytes`` (default 4 MiB, ``None`` for no limit) bounds the bytes of one line, its
    newline not counted. A longer line is read and thrown away block by block up to its newline
    (memory stays at about the limit), and handed over failed with a :class:`LineTooLong` reason
    naming its size and the limit; its data is the text of its first 256 bytes. Memory held by
    the source is about one chunk of lines (at most 1 MiB, or one line of up to the limit), plus
    what the pipeline holds in flight (its buffers, in items: each up to ``max_line_bytes``).

    Examples:
        >>> JsonlSource("events.jsonl", checkpoint="events.ck", max_line_bytes=64 << 10)
    """

    _options: ClassVar[frozenset[str]] = frozenset()

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        checkpoint: str | os.PathLike[str] | None = None,
        raw: bool = False,
        max_line_bytes: int | None = MAX_LINE_BYTES,
        name: str | None = None,
    ) -> None:
        if max_line_bytes is not None and (
            not isinstance(max_line_bytes, int)
            or isinstance(max_line_bytes, bool)
            or max_line_bytes < 1
        ):
            raise ValueError(
                f"max_line_bytes={max_line_bytes!r} must be a positive integer or None"
            )
        self.path: Path = Path(path)
        self.checkpoint: Path | None = Path(checkpoint) if checkpoint is not None else None
        self.raw = raw
        self.max_line_bytes = max_line_bytes
        self.name = name

    async def produce(self, out: Outlet) -> None:
        start = read_checkpoint(self.checkpoint) if self.checkpoint is not None else 0
        acker = _Checkpointer(self.checkpoint, start)
        f = await trio.to_thread.run_sync(lambda: open(self.path, "rb"))  # noqa: SIM115
        try:
            line_no = await trio.to_thread.run_sync(_count_lines, f, start)
            offset = start
            limit = self.max_line_bytes
            while True:
                room = await out.demand()
                lines = await trio.to_thread.run_sync(_read_lines, f, min(room, _CHUNK), limit)
                if not lines:
                    return
                batch: list[Message[Any]] = []
                for text in lines:
                    end = offset + len(text)
                    line_no += 1
                    meta = {"offset": offset, "end": end, "line": line_no}
                    offset = end
                    if isinstance(text, _Skipped):
                        assert limit is not None
                        batch.append(text.message(meta, acker, limit))
                        continue
                    stripped = text.strip()
                    if not stripped:
                        await acker.ack([Message(None, meta)], [])
                        continue
                    batch.append(self._message(stripped, meta, acker))
                await out.send_many(batch)
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(f.close)

    def _message(self, line: bytes, meta: dict[str, Any], acker: _Checkpointer) -> Message[Any]:
        if self.raw:
            return Message(line.decode("utf-8", "replace"), meta, acker)
        reason: BaseException
        try:
            return Message(json.loads(line), meta, acker)
        except ValueError as exc:
            reason = exc
        except RecursionError as exc:  # ``[[[[...``: the item's fault, not the run's
            reason = nesting_too_deep()
            reason.__cause__ = exc
        return Message(line.decode("utf-8", "replace"), meta, acker, "failed", reason)

    @property
    def label(self) -> str:
        return self.name or f"JsonlSource({self.path.name})"

    def __repr__(self) -> str:
        return f"JsonlSource({str(self.path)!r})"


def _count_lines(f: IO[bytes], upto: int) -> int:
    """Lines before byte ``upto``; leaves ``f`` positioned there."""
    f.seek(0)
    count, left = 0, upto
    while left > 0:
        block = f.read(min(left, 1 << 20))
        if not block:
            break
        count += block.count(b"\n")
        left -= len(block)
    f.seek(upto)
    return count


@final
class _Skipped:
    """A line over the limit, read past: its first bytes, its length, whether a newline ends it."""

    __slots__ = ("head", "newline", "size")

    def __init__(self, head: bytes, size: int, newline: bool) -> None:
        self.head = head
        self.size = size  # bytes in the file, newline included: where the next line starts
        self.newline = newline

    def __len__(self) -> int:
        return self.size

    def message(self, meta: dict[str, Any], acker: _Checkpointer, limit: int) -> Message[Any]:
        reason = LineTooLong(
            f"line {meta['line']} is {self.size - self.newline} bytes long, "
            f"more than max_line_bytes={limit}"
        )
        return Message(self.head.decode("utf-8", "replace"), meta, acker, "failed", reason)


def _read_lines(f: IO[bytes], count: int, limit: int | None) -> list[bytes | _Skipped]:
    """Up to ``count`` lines (fewer once about ``_CHUNK_BYTES`` are read); a line longer than
    ``limit`` is read past up to its newline and stands as a :class:`_Skipped`."""
    lines: list[bytes | _Skipped] = []
    total = 0
    while len(lines) < count and total < _CHUNK_BYTES:
        if limit is None:
            line = f.readline()
        else:
            # at most the limit, its newline, and one more byte that tells an over-long line
            line = f.readline(limit + 1)
            if len(line) > limit and not line.endswith(b"\n"):
                lines.append(_skip_rest(f, line))
                total += len(line)
                continue
        if not line:
            break
        lines.append(line)
        total += len(line)
    return lines


def _skip_rest(f: IO[bytes], start: bytes) -> _Skipped:
    """Read and drop the rest of a line whose first bytes are ``start``, block by block."""
    size = len(start)
    while True:
        block = f.readline(_SKIP_BLOCK)
        size += len(block)
        if not block or block.endswith(b"\n"):
            return _Skipped(start[:_HEAD], size, bool(block))


@final
class JsonlSink:
    """Append items (or batches: lists of items) to a JSON-lines file, one object per line.

    Use it as a sink function (``sink(JsonlSink(path))``) or as a dead-letter handler
    (``pipeline.on_failure(JsonlSink(path).write_failed)``), which writes each failed message's
    data with its reason. Writes happen in a worker thread; each call is flushed and fsynced before
    it returns, so an ack means the line is on disk.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        default: Callable[[Any], Any] | None = None,
    ) -> None:
        self.path: Path = Path(path)
        self.default: Callable[[Any], Any] = default or _default

    async def __call__(self, item: Any) -> None:
        items = items_of(item)
        await self._write([json.dumps(x, default=self.default) for x in items])

    async def write_failed(self, messages: list[Message[Any]]) -> None:
        """Write failed messages as ``{"data": ..., "reason": ..., "metadata": ...}`` lines."""
        await self._write(
            [
                json.dumps(
                    {
                        "data": m.data,
                        "reason": _reason_text(m.reason),
                        "metadata": m.metadata,
                    },
                    default=self.default,
                )
                for m in messages
            ]
        )

    async def _write(self, lines: list[str]) -> None:
        text = "".join(line + "\n" for line in lines)
        await trio.to_thread.run_sync(_append, self.path, text)

    @property
    def __name__(self) -> str:  # for reprs: sink(JsonlSink(...))
        return f"JsonlSink({self.path.name})"

    def __repr__(self) -> str:
        return f"JsonlSink({str(self.path)!r})"


def _append(path: Path, text: str) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _default(value: Any) -> Any:
    if is_attrs(value):
        import attrs

        return attrs.asdict(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return describe(value)

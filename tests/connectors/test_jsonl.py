"""JSON-lines source (with checkpoint) and sink, on real files."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
import trio

import trioflow as tf
from trioflow.connectors.jsonl import JsonlSink, JsonlSource, read_checkpoint


def write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines))


async def test_reads_objects_with_line_metadata_and_fails_malformed_lines(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    write_lines(path, ['{"n": 1}', "", '{"n": 2', '{"n": 3}'])
    seen: list[tuple[Any, int]] = []

    async def save(m: tf.Message[Any]) -> None:
        seen.append((m.data, m.metadata["line"]))

    failed: list[tf.Message[Any]] = []
    report = (
        await (JsonlSource(path) | tf.sink(save, messages=True)).on_failure(failed.extend).run()
    )
    assert seen == [({"n": 1}, 1), ({"n": 3}, 4)]
    assert [(m.data, m.metadata["line"]) for m in failed] == [('{"n": 2', 3)]
    assert isinstance(failed[0].reason, json.JSONDecodeError)
    assert report.failed_by_reason == {"JSONDecodeError": 1}
    assert (report.received, report.acked, report.failed) == (3, 2, 1)


async def test_raw_mode_gives_text(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    write_lines(path, ["not json", "{}"])
    out = await tf.collect(JsonlSource(path, raw=True))
    assert out == ["not json", "{}"]


async def test_checkpoint_moves_over_contiguous_settled_lines_and_resumes(tmp_path: Path) -> None:
    path, checkpoint = tmp_path / "in.jsonl", tmp_path / "in.checkpoint"
    write_lines(path, [json.dumps({"n": i}) for i in range(2000)])
    rng = random.Random(3)
    first: list[int] = []
    stop = trio.Event()

    async def slow(obj: dict[str, int]) -> int:
        await trio.sleep(rng.random() / 1000)  # finishes out of order across 8 workers
        return obj["n"]

    async def save(n: int) -> None:
        first.append(n)
        if len(first) == 700:
            stop.set()

    pipeline = JsonlSource(path, checkpoint=checkpoint) | tf.process(slow, n=8) | tf.sink(save)
    report = await pipeline.run(stop=stop)
    assert report.unsettled == 0
    offset = read_checkpoint(checkpoint)
    resume_line = path.read_bytes()[:offset].count(b"\n")  # lines before the checkpoint
    # every line before the checkpoint was settled, and the checkpoint is a line boundary
    assert set(range(resume_line)) <= set(first)
    assert offset == 0 or path.read_bytes()[offset - 1 : offset] == b"\n"
    assert resume_line >= 600

    second = await tf.collect(
        JsonlSource(path, checkpoint=checkpoint) | tf.process(lambda o: o["n"])
    )
    assert second == list(range(resume_line, 2000))  # resumed exactly at the checkpoint
    assert set(first) | set(second) == set(range(2000))  # nothing lost
    assert read_checkpoint(checkpoint) == path.stat().st_size


async def test_a_crash_leaves_the_checkpoint_before_the_unfinished_line(tmp_path: Path) -> None:
    path, checkpoint = tmp_path / "in.jsonl", tmp_path / "ck"
    write_lines(path, [json.dumps({"n": i}) for i in range(100)])

    async def save(obj: dict[str, int]) -> None:
        if obj["n"] == 42:
            raise tf.Fatal("disk full")

    with pytest.raises(tf.PipelineError):
        await (JsonlSource(path, checkpoint=checkpoint) | tf.sink(save)).run()
    resume_line = path.read_bytes()[: read_checkpoint(checkpoint)].count(b"\n")
    assert resume_line <= 42
    rest = await tf.collect(JsonlSource(path, checkpoint=checkpoint) | tf.process(lambda o: o["n"]))
    assert rest[0] == resume_line
    assert rest[-1] == 99


async def test_sink_and_dead_letter_writer(tmp_path: Path) -> None:
    out, dead = tmp_path / "out.jsonl", tmp_path / "dead.jsonl"

    def check(n: int) -> dict[str, int]:
        if n % 3 == 0:
            raise ValueError(f"{n} is divisible by 3")
        return {"n": n}

    pipeline = (
        tf.from_iterable(range(10)) | tf.process(check) | tf.batch(4) | tf.sink(JsonlSink(out))
    ).on_failure(JsonlSink(dead).write_failed)
    await pipeline.run()
    assert [json.loads(x)["n"] for x in out.read_text().splitlines()] == [1, 2, 4, 5, 7, 8]
    dead_rows = [json.loads(x) for x in dead.read_text().splitlines()]
    assert sorted((d["data"], d["reason"]) for d in dead_rows) == [
        (n, f"ValueError: {n} is divisible by 3") for n in (0, 3, 6, 9)
    ]


# --- lines that must not stop the source ---------------------------------------------------------


async def test_a_deeply_nested_line_fails_alone_and_the_checkpoint_moves_past_it(
    tmp_path: Path,
) -> None:
    path, checkpoint = tmp_path / "in.jsonl", tmp_path / "ck"
    write_lines(path, ['{"n": 1}', "[" * 100_000, '{"n": 3}'])  # too deep for any Python
    for _ in range(2):  # a restart from the checkpoint does not meet the line again
        seen: list[Any] = []
        failed: list[tf.Message[Any]] = []
        pipeline = JsonlSource(path, checkpoint=checkpoint) | tf.sink(seen.append)
        report = await pipeline.on_failure(failed.extend).run()
        assert read_checkpoint(checkpoint) == path.stat().st_size
        if report.received:
            assert seen == [{"n": 1}, {"n": 3}]
            assert report.failed_by_reason == {"DecodeError": 1}
            [bad] = failed
            assert bad.metadata["line"] == 2
            assert bad.data.startswith("[[[[")
            assert isinstance(bad.reason, tf.DecodeError)
            assert str(bad.reason).startswith("nesting too deep: arrays or objects nested deeper")
    assert (report.received, seen) == (0, [])


async def test_a_line_over_the_default_limit_fails_with_its_size_and_is_skipped(
    tmp_path: Path,
) -> None:
    path, checkpoint = tmp_path / "in.jsonl", tmp_path / "ck"
    long = '{"s": "' + "x" * (5 << 20) + '"}'  # 5 MiB: over the 4 MiB default
    write_lines(path, ['{"n": 1}', long, '{"n": 3}'])
    seen: list[Any] = []
    failed: list[tf.Message[Any]] = []
    pipeline = JsonlSource(path, checkpoint=checkpoint) | tf.sink(seen.append)
    report = await pipeline.on_failure(failed.extend).run()
    assert seen == [{"n": 1}, {"n": 3}]
    assert report.failed_by_reason == {"LineTooLong": 1}
    [bad] = failed
    assert str(bad.reason) == (
        f"line 2 is {len(long)} bytes long, more than max_line_bytes={4 << 20}"
    )
    assert bad.data == long[:256]  # what is kept of it: its head, to recognise it by
    assert (bad.metadata["line"], bad.metadata["end"] - bad.metadata["offset"]) == (
        2,
        len(long) + 1,
    )
    assert read_checkpoint(checkpoint) == path.stat().st_size


async def test_an_over_long_line_is_never_held_whole(tmp_path: Path) -> None:
    import tracemalloc

    path = tmp_path / "in.jsonl"

    def write() -> None:
        with open(path, "wb") as f:
            f.write(b'{"n": 1}\n"')
            for _ in range(64):  # one line of 64 MiB
                f.write(b"x" * (1 << 20))
            f.write(b'"\n{"n": 3}\n')

    write()
    seen: list[Any] = []
    tracemalloc.start()
    try:
        pipeline = JsonlSource(path) | tf.sink(seen.append)
        report = await pipeline.on_failure(lambda messages: None).run()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (seen, report.failed_by_reason) == ([{"n": 1}, {"n": 3}], {"LineTooLong": 1})
    assert peak < 12 << 20  # about the 4 MiB limit and a 1 MiB block, not 64 MiB


async def test_max_line_bytes_bounds_lines_without_their_newline(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    fits = '"' + "a" * 98 + '"'  # 100 bytes: exactly the limit
    over = '"' + "b" * 99 + '"'  # 101 bytes
    path.write_text("\n".join([fits, over, "[1]", fits + "\r", over]))  # the last: no newline
    seen: list[tuple[Any, int]] = []
    failed: list[tf.Message[Any]] = []

    async def save(m: tf.Message[Any]) -> None:
        seen.append((m.data, m.metadata["line"]))

    source = JsonlSource(path, max_line_bytes=100)
    report = await (source | tf.sink(save, messages=True)).on_failure(failed.extend).run()
    assert seen == [("a" * 98, 1), ([1], 3)]
    assert [(m.metadata["line"], str(m.reason)) for m in failed] == [
        (2, "line 2 is 101 bytes long, more than max_line_bytes=100"),
        (4, "line 4 is 101 bytes long, more than max_line_bytes=100"),  # "\r" is the line's
        (5, "line 5 is 101 bytes long, more than max_line_bytes=100"),
    ]
    assert [m.data for m in failed] == [over, fits + "\r", over]
    assert report.received == 5
    # no limit: as before
    unlimited = await tf.collect(JsonlSource(path, max_line_bytes=None, raw=True))
    assert unlimited == [fits, over, "[1]", fits, over]


def test_max_line_bytes_is_checked() -> None:
    for bad in (0, -1, 1.5, True):
        with pytest.raises(
            ValueError, match=rf"^max_line_bytes={bad!r} must be a positive integer or None$"
        ):
            JsonlSource("x.jsonl", max_line_bytes=bad)  # type: ignore[arg-type]

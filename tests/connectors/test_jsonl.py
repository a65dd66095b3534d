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

"""The pytest plugin (entry point ``pytest11``): fixtures and hypothesis profiles.

Fixtures:

* ``recording_source``: a factory of :class:`TestSource`\\ s;
* ``push_source``: a :class:`PushSource`, closed at teardown;
* ``start_pipeline``: an async factory that starts a pipeline as a service in the test's nursery
  and stops it (gracefully) at teardown. It runs in the test's trio run, so it composes with
  pytest-trio's ``autojump_clock``.

Hypothesis profiles ``trioflow-dev`` (fast) and ``trioflow-ci`` (more examples), selected with
``--hypothesis-profile=trioflow-ci``. The plugin registers only these two names and loads none:
a project's own profiles, hypothesis's built-in ``ci`` profile (loaded when ``CI`` is set) and
whatever profile is active are left exactly as they were.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from typing import Any

import pytest
import trio

from .._pipeline import Pipeline
from .._runner import PipelineHandle
from ._push import PushSource
from ._source import TestSource

__all__ = ["push_source", "recording_source", "start_pipeline"]


def _register_profiles() -> None:
    try:
        from hypothesis import HealthCheck, settings
    except ImportError:  # pragma: no cover - hypothesis is optional
        return
    common: dict[str, Any] = {
        "deadline": None,
        "suppress_health_check": [HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    }
    # only names of our own: hypothesis loads its "ci" profile whenever CI is set, and
    # re-registering the active profile reloads it, which would change a user's settings
    settings.register_profile("trioflow-dev", max_examples=60, **common)
    settings.register_profile("trioflow-ci", max_examples=600, derandomize=False, **common)


_register_profiles()


@pytest.fixture
def recording_source() -> Callable[..., TestSource[Any]]:
    """A factory of :class:`TestSource`: ``src = recording_source([1, 2, 3])``.

    Example:
        >>> async def test_double(recording_source, autojump_clock):
        ...     src = recording_source([1, 2])
        ...     await (src | process(double) | sink(save)).run()
        ...     assert sorted(src.acked) == [1, 2]
    """

    def make(items: Iterable[Any], *, name: str | None = None) -> TestSource[Any]:
        return TestSource(items, name=name)

    return make


@pytest.fixture
def push_source() -> Iterator[PushSource[Any]]:
    """A :class:`PushSource` for :func:`test_message` / :func:`test_batch`; closed at teardown.

    Example:
        >>> async def test_decode(push_source, start_pipeline, autojump_clock):
        ...     await start_pipeline(push_source | process(decode) | sink(save))
        ...     assert (await test_message(push_source, b"{}")).ok
    """
    source: PushSource[Any] = PushSource()
    yield source
    source.close()


@pytest.fixture
async def start_pipeline(
    nursery: trio.Nursery,
) -> AsyncIterator[Callable[[Pipeline], Awaitable[PipelineHandle]]]:
    """Start pipelines as services in the test's nursery; they are stopped at teardown.

    ``handle = await start_pipeline(pipeline)`` returns once the pipeline runs. At teardown each
    is stopped gracefully and awaited, so what a test pushed is acked before the run ends.

    Example:
        >>> async def test_service(push_source, start_pipeline, autojump_clock):
        ...     handle = await start_pipeline(push_source | sink(save))
        ...     await test_message(push_source, 1)
        ...     assert handle.metrics.acked == 1
    """
    handles: list[PipelineHandle] = []

    async def start(pipeline: Pipeline) -> PipelineHandle:
        handle: PipelineHandle = await nursery.start(pipeline.serve)
        handles.append(handle)
        return handle

    yield start
    for handle in handles:
        handle.stop()
    for handle in handles:
        await handle.wait()

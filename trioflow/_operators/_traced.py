"""Calls seen by instruments: the seam a tracer (``trioflow.observe.OpenTelemetry``) wraps.

An instrument that overrides :meth:`~trioflow.observe.Instrument.wrap_call` gets, per
``process``/``sink`` stage, the stage's call as a function of the item's *view*: the
:class:`~trioflow.Message` (with its metadata, where a broker source put the trace context) or,
after a batch, a :class:`~trioflow.Batch` of its members' messages. It returns a function of the
same shape (or ``None`` to leave the stage alone). While some instrument wraps a stage, that
stage's workers build views as a ``messages=True`` stage does; a stage of plain data still gets
plain data: the innermost call unwraps the view and wraps the result back. Stages nobody wraps
pay nothing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeGuard

from .._awaitables import is_awaitable
from .._batches import Batch
from .._message import Message, is_message

__all__ = ["ViewCall", "view_call", "wrapped_call"]

#: a call of the item's view (a ``Message``, or a ``Batch`` of messages) that is awaited
ViewCall = Callable[[Any], Awaitable[Any]]


def _is_messages(value: object) -> TypeGuard[list[Message[Any]]]:
    return isinstance(value, list)  # a batch's view: its members' messages


def _data(view: Any) -> Any:
    if is_message(view):
        return view.data
    if _is_messages(view):
        return Batch([m.data for m in view], view.info if isinstance(view, Batch) else None)
    return view


def view_call(fn: Callable[[Any], Any], is_async: bool, messages: bool) -> ViewCall:
    """``fn`` as a call of views: a plain-data stage's ``fn`` gets the data, and its result goes
    on as that message's (or that batch's) data."""

    async def call(view: Any) -> Any:
        result = fn(view if messages else _data(view))
        if is_async or is_awaitable(result):
            result = await result
        if messages:
            return result
        # a stage of plain data: its result goes on as that message's (or that batch's) data
        return view.replace(result) if isinstance(view, Message) else Message(result)

    return call


def wrapped_call(
    fn: Callable[[Any], Any],
    is_async: bool,
    messages: bool,
    wrappers: list[Callable[[ViewCall], ViewCall | None]],
) -> ViewCall | None:
    """``fn`` as a call of views, wrapped by each of ``wrappers`` (innermost first); ``None``
    when every wrapper declines (returns ``None``): the stage then keeps its plain calls and
    builds no views, so an instrument that wraps nothing (a tracer with a no-op provider) costs
    nothing."""
    call = view_call(fn, is_async, messages)
    wrapped = call
    for wrap in wrappers:
        got = wrap(wrapped)
        if got is not None:
            wrapped = got
    return None if wrapped is call else wrapped

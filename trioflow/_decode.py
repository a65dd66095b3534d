"""``decode``: bytes, text or dicts into typed objects with cattrs, failing with clear reasons.

The default converter is strict, as a validator should be: cattrs on its own coerces (``"5"`` for
a ``str`` from ``5``, ``1`` for an ``int`` from ``1.5`` or ``true``, ``[]`` for a ``list`` from
``{}``), which would let wrong types through. Here ``int``, ``float``, ``str`` and ``bool`` accept
only their JSON counterparts (an ``int`` is a fine ``float``; a ``bool`` is never a number) and a
``list`` only an array. For mappings of strings (a Redis stream entry, form data), where
``"5"`` is a fine ``int``, pass ``strict=False`` to get cattrs' conversions; ``converter=``
replaces both.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Generic, Literal, TypeVar, final

import cattrs
from cattrs.cols import is_mutable_sequence, list_structure_factory
from cattrs.v import format_exception

from ._exceptions import TrioflowError
from ._groups import group_of
from ._stages import Process, process

__all__ = ["DecodeError", "Decoder", "converting_converter", "decode", "strict_converter"]

T = TypeVar("T")


@final
class DecodeError(TrioflowError, ValueError):
    """An item could not be decoded; ``errors`` lists each problem with its field path.

    Example message: ``Invoice: invalid value for type, expected int @ $.amount``.
    """

    def __init__(self, message: str, errors: list[str]) -> None:
        super().__init__(message)
        self.errors = errors


class _WrongType(TypeError):
    """A value of the wrong JSON type; its message is the reason (``expected int, got str``)."""


def _json_type(value: Any) -> str:
    names: dict[type[Any], str] = {
        dict: "object",
        list: "array",
        str: "str",
        bool: "bool",
        type(None): "null",
    }
    kind: type[Any] = value.__class__
    return names.get(kind, kind.__name__)


def _exact(cls: type[Any], accept: tuple[type[Any], ...]) -> Any:
    def hook(value: Any, _: Any) -> Any:
        if (isinstance(value, bool) and bool not in accept) or not isinstance(value, accept):
            raise _WrongType(f"expected {cls.__name__}, got {_json_type(value)}")
        return cls(value)

    return hook


def strict_converter() -> cattrs.Converter:
    """The converter :func:`decode` uses by default: no coercion between JSON types.

    Unknown fields are errors (``forbid_extra_keys``) and every problem is reported with its
    path (``detailed_validation``).

    Examples:
        >>> strict_converter().structure({"id": "7"}, Invoice)  # raises: expected int, got str
    """
    c = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)
    c.register_structure_hook(int, _exact(int, (int,)))
    c.register_structure_hook(float, _exact(float, (int, float)))
    c.register_structure_hook(str, _exact(str, (str,)))
    c.register_structure_hook(bool, _exact(bool, (bool,)))

    def sequence(t: Any) -> Any:
        inner = list_structure_factory(t, c)

        def hook(value: Any, cl: Any) -> Any:
            if not isinstance(value, (list, tuple)):
                raise _WrongType(f"expected array, got {_json_type(value)}")
            return inner(value, cl)

        return hook

    c.register_structure_hook_factory(is_mutable_sequence, sequence)
    return c


def converting_converter() -> cattrs.Converter:
    """cattrs' own conversions (``"5"`` -> ``5``), with unknown fields refused and every problem
    reported with its path: for mappings of strings, as brokers and forms deliver them.

    Examples:
        >>> converting_converter().structure({"id": "7"}, Invoice).id
        7
    """
    return cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)


def nesting_too_deep(type_name: str | None = None) -> DecodeError:
    """The error for a document nested deeper than the decoder can follow (``[[[[...``).

    ``json`` and cattrs recurse once per level and raise ``RecursionError`` near the
    interpreter's recursion limit; that is a property of the item, not a bug, so it is reported
    as a :class:`DecodeError` that fails the item alone.
    """
    problem = (
        "nesting too deep: arrays or objects nested deeper than Python's recursion limit "
        f"({sys.getrecursionlimit()}) allows"
    )
    return DecodeError(f"{type_name}: {problem}" if type_name else problem, ["nesting too deep"])


def _has_recursion_error(exc: BaseException) -> bool:
    """Whether a (possibly deep) cattrs error group holds a ``RecursionError``; no recursion."""
    stack = [exc]
    while stack:
        e = stack.pop()
        if isinstance(e, RecursionError):
            return True
        group = group_of(e)
        if group is not None:
            stack.extend(group.exceptions)
    return False


def _format(exc: BaseException, target: Any) -> str:
    if isinstance(exc, _WrongType):
        return str(exc)
    text = format_exception(exc, target)
    if text.startswith("unknown error"):
        return f"{type(exc).__name__}: {exc}"
    return text


@final
class Decoder(Generic[T]):
    """The callable behind :func:`decode` (usable on its own: ``Decoder(Invoice)(raw)``)."""

    def __init__(
        self,
        cls: type[T],
        *,
        format: Literal["json"] | None = "json",
        converter: cattrs.Converter | None = None,
        strict: bool = True,
    ) -> None:
        if format not in ("json", None):
            raise ValueError(f"format={format!r} must be 'json' or None")
        self.cls = cls
        self.format = format
        self.converter = converter or (strict_converter() if strict else converting_converter())
        name = getattr(cls, "__name__", repr(cls))
        self.__name__ = self.__qualname__ = f"decode({name})"
        self._type_name = name

    def __call__(self, raw: Any) -> T:
        data = raw
        if self.format == "json" and isinstance(raw, (bytes, bytearray, memoryview)):
            try:
                data = bytes(raw).decode("utf-8")  # pyright: ignore[reportUnknownArgumentType]
            except UnicodeDecodeError as exc:
                raise DecodeError(
                    f"{self._type_name}: invalid UTF-8 at byte {exc.start}: {exc.reason}",
                    [f"invalid UTF-8 at byte {exc.start}"],
                ) from exc
        if self.format == "json" and isinstance(data, str):
            try:
                data = json.loads(data)
            except json.JSONDecodeError as exc:
                raise DecodeError(
                    f"{self._type_name}: malformed JSON: {exc.msg} at line {exc.lineno} "
                    f"column {exc.colno}",
                    [f"malformed JSON: {exc.msg}"],
                ) from exc
            except RecursionError as exc:
                raise nesting_too_deep(self._type_name) from exc
        if hasattr(self.cls, "__attrs_attrs__") and not isinstance(data, dict):
            problem = f"expected an object, got {_json_type(data)} @ $"
            raise DecodeError(f"{self._type_name}: {problem}", [problem])
        try:
            return self.converter.structure(data, self.cls)
        except RecursionError as exc:  # a recursive type, structured level by level
            raise nesting_too_deep(self._type_name) from exc
        except Exception as exc:
            if _has_recursion_error(exc):  # the same, collected by detailed validation
                raise nesting_too_deep(self._type_name) from exc
            if isinstance(exc, cattrs.BaseValidationError):
                errors = cattrs.transform_error(exc, format_exception=_format)
            else:
                errors = [f"{type(exc).__name__}: {exc} @ $"]
            raise DecodeError(f"{self._type_name}: {'; '.join(errors)}", errors) from exc

    def __repr__(self) -> str:
        return self.__name__


def decode(
    cls: type[T],
    *,
    format: Literal["json"] | None = "json",
    converter: cattrs.Converter | None = None,
    strict: bool = True,
    n: int = 1,
    name: str | None = None,
) -> Process[Any, T]:
    """A stage that turns bytes, str or dicts into ``cls`` (an attrs class, or any type cattrs
    structures); a bad item fails with a :class:`DecodeError` naming each field path and problem.

    Unknown fields, wrong types, missing fields, invalid UTF-8, malformed JSON and JSON nested too
    deeply for the parser (``nesting too deep``) each give a clear reason; nothing about a bad
    item stops the pipeline. With ``format=None`` items must already be dicts (or whatever
    ``converter`` structures). ``strict`` (the default) refuses values of the wrong JSON type;
    ``strict=False`` converts them (``"5"`` to ``5``: for Redis stream fields).

    Examples:
        >>> pipeline = from_iterable(lines) | decode(Invoice) | batch(100, 1.0) | sink(save)
    """
    return process(Decoder(cls, format=format, converter=converter, strict=strict), n, name=name)

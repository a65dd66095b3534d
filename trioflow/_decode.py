"""``decode``: bytes, text or dicts into typed objects with cattrs, failing with clear reasons."""

from __future__ import annotations

import json
from typing import Any, Generic, Literal, TypeVar, final

import cattrs

from ._exceptions import TrioflowError
from ._stages import Process, process

__all__ = ["DecodeError", "Decoder", "decode"]

T = TypeVar("T")


@final
class DecodeError(TrioflowError, ValueError):
    """An item could not be decoded; ``errors`` lists each problem with its field path.

    Example message: ``Invoice: invalid value for type, expected int @ $.amount``.
    """

    def __init__(self, message: str, errors: list[str]) -> None:
        super().__init__(message)
        self.errors = errors


@final
class Decoder(Generic[T]):
    """The callable behind :func:`decode` (usable on its own: ``Decoder(Invoice)(raw)``)."""

    def __init__(
        self,
        cls: type[T],
        *,
        format: Literal["json"] | None = "json",
        converter: cattrs.Converter | None = None,
    ) -> None:
        if format not in ("json", None):
            raise ValueError(f"format={format!r} must be 'json' or None")
        self.cls = cls
        self.format = format
        self.converter = converter or cattrs.Converter(
            forbid_extra_keys=True, detailed_validation=True
        )
        name = getattr(cls, "__name__", repr(cls))
        self.__name__ = self.__qualname__ = f"decode({name})"
        self._type_name = name

    def __call__(self, raw: Any) -> T:
        data = raw
        if self.format == "json" and isinstance(raw, (bytes, bytearray, memoryview)):
            try:
                data = bytes(raw).decode("utf-8")
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
        if hasattr(self.cls, "__attrs_attrs__") and not isinstance(data, dict):
            problem = f"expected an object, got {type(data).__name__} @ $"
            raise DecodeError(f"{self._type_name}: {problem}", [problem])
        try:
            return self.converter.structure(data, self.cls)
        except Exception as exc:
            if isinstance(exc, cattrs.BaseValidationError):
                errors = cattrs.transform_error(exc)
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
    n: int = 1,
    name: str | None = None,
) -> Process[Any, T]:
    """A stage that turns bytes, str or dicts into ``cls`` (an attrs class, or any type cattrs
    structures); a bad item fails with a :class:`DecodeError` naming each field path and problem.

    Unknown fields, wrong types, missing fields, invalid UTF-8 and malformed JSON each give a clear
    reason; nothing about a bad item stops the pipeline. With ``format=None`` items must already be
    dicts (or whatever ``converter`` structures).

    Examples:
        >>> pipeline = from_iterable(lines) | decode(Invoice) | batch(100, 1.0) | sink(save)
    """
    return process(Decoder(cls, format=format, converter=converter), n, name=name)

"""Loading the target of ``trioflow run``/``graph``: ``path/to/file.py:name`` or ``module:name``.

An error while importing the user's file is reported with the user's own frames (file, line,
source line) and the exception, not with trioflow's import machinery.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from ._pipeline import Pipeline, is_pipeline

__all__ = ["UsageError", "load_pipeline", "pipeline_name"]

_PACKAGE_DIR = str(Path(__file__).resolve().parent)


class UsageError(Exception):
    """A mistake on the command line: printed as one line, exit status 2."""


def load_pipeline(target: str) -> Pipeline[Any, Any]:
    """The pipeline named by ``path/to/file.py:name`` or ``package.module:name``.

    ``name`` defaults to ``pipeline`` and may be dotted; it may also name a function taking no
    arguments that returns the pipeline.

    Raises:
        UsageError: no such file or module, no such attribute, or not a pipeline.

    Examples:
        >>> load_pipeline("examples/orders.py:pipeline")
    """
    where, _, attr = target.rpartition(":") if ":" in target else (target, "", "pipeline")
    attr = attr or "pipeline"
    module = _import(where)
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = cast("dict[str, object]", vars(module))
            found = sorted(n for n, v in names.items() if isinstance(v, Pipeline))
            hint = f" (pipelines there: {', '.join(found)})" if found else ""
            raise UsageError(f"{where} has no attribute {attr!r}{hint}")
        obj = getattr(obj, part)
    if is_pipeline(obj):
        return obj
    if callable(obj) and not isinstance(obj, type):
        try:
            made = obj()
        except TypeError as exc:
            raise UsageError(
                f"{where}:{attr} is {_kind(obj)}, not a trioflow.Pipeline; calling it with no "
                f"arguments failed: {exc}"
            ) from exc
        if is_pipeline(made):
            return made
        raise UsageError(f"{where}:{attr}() returned {_kind(made)}, not a trioflow.Pipeline")
    raise UsageError(f"{where}:{attr} is {_kind(obj)}, not a trioflow.Pipeline")


def _kind(obj: Any) -> str:
    if callable(obj) and hasattr(obj, "__name__") and not isinstance(obj, type):
        return f"a function ({obj.__name__})"
    name = type(obj).__name__
    return f"an {name}" if name[:1].lower() in "aeiou" else f"a {name}"


def _import(where: str) -> Any:
    looks_like_path = where.endswith(".py") or "/" in where or "\\" in where
    if looks_like_path:
        path = Path(where)
        if not path.is_file():
            raise UsageError(f"no such file: {where}")
        name = f"_trioflow_target_{path.stem}"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise UsageError(f"cannot import {where}: not a Python file")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        # the file's folder first, as `python file.py` would: sibling imports work
        sys.path.insert(0, str(path.resolve().parent))
        _exec(lambda: spec.loader.exec_module(module), where)  # type: ignore[union-attr]
        return module
    try:
        return _exec(lambda: importlib.import_module(where), where)
    except ModuleNotFoundError as exc:
        if exc.name and where.startswith(exc.name):
            raise UsageError(f"no such module: {where} (nor a file: add .py for a path)") from exc
        raise


def _exec(fn: Callable[[], Any], where: str) -> Any:
    try:
        return fn()
    except UsageError:
        raise
    except ModuleNotFoundError as exc:
        if exc.name and where.startswith(exc.name):
            raise
        raise UsageError(_import_failed(where, exc)) from exc
    except Exception as exc:
        raise UsageError(_import_failed(where, exc)) from exc


def _import_failed(where: str, exc: BaseException) -> str:
    """``importing WHERE failed:`` and the user's frames (file, line, code) and the error."""
    return f"importing {where} failed (--traceback for the whole traceback):\n{_user_frames(exc)}"


def _user_frames(exc: BaseException) -> str:
    """The traceback of ``exc`` without importlib's and trioflow's frames, as Python prints it
    (a ``SyntaxError`` shows its file, line and caret)."""
    te = traceback.TracebackException.from_exception(exc)
    te.stack = traceback.StackSummary.from_list(
        [
            f
            for f in te.stack
            if not f.filename.startswith("<")  # importlib, attrs-generated code
            and not str(Path(f.filename).resolve()).startswith(_PACKAGE_DIR)
        ]
    )
    te.__cause__ = te.__context__ = None
    lines = list(te.format())
    if lines and lines[0].startswith("Traceback"):
        lines = lines[1:]
    return "".join(lines).rstrip()


def pipeline_name(target: str | None) -> str:
    """The ``pipeline`` label of a CLI run: the target's file or module name, with the
    attribute when it is not ``pipeline`` (``etl.py:pipeline`` -> ``etl``; ``jobs:daily`` ->
    ``jobs:daily``); ``demo`` for the demo."""
    if not target:
        return "demo"
    where, _, attr = target.rpartition(":") if ":" in target else (target, "", "pipeline")
    stem = Path(where).stem if where.endswith(".py") else where
    return stem if attr in ("", "pipeline") else f"{stem}:{attr}"

"""A griffe extension for the docs build: read trioflow's docstrings as napoleon would.

trioflow's docstrings follow the Google/napoleon style, where ``Example:`` opens an examples
section and Sphinx roles (``:class:`~trioflow.Message```) mark cross-references. griffe only
knows ``Examples:`` and renders roles verbatim, so this extension rewrites both before the
docstrings are parsed: ``Example:`` becomes ``Examples:`` (doctest blocks then render as code)
and a role becomes inline code of its target's last component. Docs-only: nothing in trioflow/
depends on it.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_EXAMPLE = re.compile(r"^(\s*)Example:\s*$", re.M)
_ROLE = re.compile(r":(?:class|meth|func|data|attr|mod|exc|obj):`~?([^`]+)`")


def _short(match: re.Match[str]) -> str:
    target = match.group(1)
    return f"`{target.rsplit('.', 1)[-1] if match.group(0).find('`~') != -1 else target}`"


class NapoleonCompat(griffe.Extension):
    """Rewrite ``Example:`` headings and Sphinx roles in every docstring of a package."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        self._walk(pkg, set())

    def _walk(self, obj: griffe.Object, seen: set[str]) -> None:
        if obj.path in seen:
            return
        seen.add(obj.path)
        if obj.docstring is not None:
            text = _EXAMPLE.sub(r"\1Examples:", obj.docstring.value)
            obj.docstring.value = _ROLE.sub(_short, text)
        for member in obj.members.values():
            if not member.is_alias:
                self._walk(member, seen)  # type: ignore[arg-type]

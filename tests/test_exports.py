"""Every public name is exported once, from where it is meant to be (httpx's test, adapted)."""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import pytest

import trioflow

MODULES = ["trioflow", "trioflow.abc", "trioflow.testing", "trioflow.observe"]


def _reexports(module_name: str) -> list[str]:
    module = importlib.import_module(module_name)
    assert module.__file__ is not None
    tree = ast.parse(Path(module.__file__).read_text())
    names = []
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            for alias in node.names:
                assert alias.asname == alias.name, f"{module_name}: re-export as `X as X`"
                names.append(alias.name)
    return names


@pytest.mark.parametrize("module_name", MODULES)
def test_each_public_name_exported_once_and_importable(module_name: str) -> None:
    module = importlib.import_module(module_name)
    names = _reexports(module_name)
    assert len(names) == len(set(names)), "a name is exported twice"
    public = {n for n in vars(module) if not n.startswith("_")}
    for name in names:
        assert getattr(module, name) is not None
    # nothing public leaks in besides submodules and the re-exports
    leaked = {n for n in public - set(names) if not isinstance(getattr(module, n), type(trioflow))}
    assert leaked == set()


@pytest.mark.parametrize("module_name", MODULES)
def test_all_lists_exactly_the_public_names(module_name: str) -> None:
    module = importlib.import_module(module_name)
    lazy = set(getattr(module, "_STRATEGIES", ()))  # imported on first use (need hypothesis)
    assert sorted(module.__all__) == sorted(set(_reexports(module_name)) | lazy)
    for name in module.__all__:
        assert getattr(module, name) is not None


def test_no_public_name_in_two_namespaces() -> None:
    seen: dict[int, str] = {}
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        for name in _reexports(module_name):
            obj = getattr(module, name)
            assert id(obj) not in seen or seen[id(obj)] == module_name, (name, seen.get(id(obj)))
            seen[id(obj)] = module_name


def test_public_classes_claim_the_public_module() -> None:
    for name in ["Message", "Pipeline", "RunReport", "Retry", "Backoff", "Fatal", "PipelineError"]:
        obj = getattr(trioflow, name)
        assert obj.__module__.startswith("trioflow._"), obj.__module__


def test_core_names() -> None:
    core = {
        "Backoff", "DEFAULT_BUFFER", "Fatal", "InvalidPipeline", "Message", "Pipeline",
        "PipelineError", "PipelineHandle", "Retry", "RunReport", "Stage", "StageStats",
        "StageTimeout", "TrioflowError", "batch", "collect", "filter", "flat_map", "from_aiter",
        "from_channel", "from_iterable", "merge", "process", "rate_limit", "route", "sink",
        "stage",
    }  # fmt: skip
    assert core <= set(_reexports("trioflow"))
    assert {"Acknowledger", "Instrument", "Outlet", "Source"} <= set(_reexports("trioflow.abc"))
    assert {"TestSource"} <= set(_reexports("trioflow.testing"))
    assert trioflow.DEFAULT_BUFFER == 1024


CONNECTORS = [
    "trioflow.connectors",
    "trioflow.connectors.jsonl",
    "trioflow.connectors.sqlite",
    "trioflow.connectors.postgres",
    "trioflow.connectors.redis",
    "trioflow.connectors.rabbitmq",
    "trioflow.connectors.kafka",
    "trioflow.connectors.http",
    "trioflow.connectors.websocket",
]
REFERENCE = Path(__file__).parent.parent / "docs" / "reference"


@pytest.mark.parametrize("module_name", CONNECTORS)
def test_connector_modules_export_their_own_names_once(module_name: str) -> None:
    module = importlib.import_module(module_name)
    assert len(module.__all__) == len(set(module.__all__)), "a name is listed twice"
    for name in module.__all__:
        obj = getattr(module, name)
        if not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue  # a type alias (``FailureMode``)
        # defined in the connector (or a private module of the connectors), not the core's
        assert obj.__module__.startswith("trioflow.connectors"), (name, obj.__module__)


def documented() -> set[tuple[str, str]]:
    """(module, name) for every member listed under a ``::: module`` of docs/reference/."""
    found: set[tuple[str, str]] = set()
    for page in REFERENCE.glob("*.md"):
        module = None
        for line in page.read_text().splitlines():
            if line.startswith("::: "):
                module = line[4:].strip()
            elif module is not None and line.startswith("        - "):
                found.add((module, line.strip()[2:]))
    return found


@pytest.mark.parametrize("module_name", MODULES + CONNECTORS)
def test_reference_lists_every_public_name(module_name: str) -> None:
    module = importlib.import_module(module_name)
    listed = {name for module_of, name in documented() if module_of == module_name}
    assert sorted(set(module.__all__) - listed) == [], f"not in docs/reference/: {module_name}"
    assert sorted(listed - set(module.__all__)) == [], f"not public: {module_name}"

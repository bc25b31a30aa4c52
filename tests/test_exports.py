"""Every module declares ``__all__``; what it lists exists; the root re-exports the core."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from types import ModuleType

import pytest

import tickwire


def _modules() -> list[str]:
    names = ["tickwire"]
    for info in pkgutil.walk_packages(tickwire.__path__, "tickwire."):
        if info.name.endswith("__main__"):
            continue  # runs the CLI on import
        names.append(info.name)
    return sorted(names)


MODULES = _modules()
CORE = [
    "tickwire.book",
    "tickwire.engine",
    "tickwire.exceptions",
    "tickwire.hub",
    "tickwire.protocol",
    "tickwire.framing",
]


def test_core_modules_are_found() -> None:
    assert set(CORE) <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_module_all_is_complete_and_resolvable(name: str) -> None:
    module = importlib.import_module(name)
    assert hasattr(module, "__all__"), f"{name} has no __all__"
    exported = list(module.__all__)
    assert len(exported) == len(set(exported)), f"{name}: duplicates in __all__"
    for attr in exported:
        assert hasattr(module, attr), f"{name}.__all__ lists missing {attr!r}"


@pytest.mark.parametrize("name", CORE)
def test_core_public_definitions_are_exported(name: str) -> None:
    module: ModuleType = importlib.import_module(name)
    defined = {
        attr
        for attr, obj in vars(module).items()
        if not attr.startswith("_")
        and (inspect.isclass(obj) or inspect.isfunction(obj))
        and obj.__module__ == name
    }
    assert defined <= set(module.__all__), (
        f"{name}: not in __all__: {defined - set(module.__all__)}"
    )


def test_root_reexports_are_the_same_objects() -> None:
    for attr in tickwire.__all__:
        obj = getattr(tickwire, attr)
        home = importlib.import_module(getattr(obj, "__module__", "tickwire") or "tickwire")
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert getattr(home, attr) is obj
            assert attr in home.__all__


def test_root_exports_every_exception() -> None:
    from tickwire import exceptions

    assert set(exceptions.__all__) <= set(tickwire.__all__)

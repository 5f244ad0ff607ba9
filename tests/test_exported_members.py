"""The public namespaces export exactly what they define, each name documented."""

from __future__ import annotations

import inspect
import sys
import typing
from types import ModuleType

import pytest

import flux_sagemaker
import flux_sagemaker.errors
import flux_sagemaker.testing


@pytest.mark.parametrize("module", [flux_sagemaker, flux_sagemaker.testing, flux_sagemaker.errors])
def test_all_lists_every_public_name_once(module: ModuleType) -> None:
    exported = module.__all__
    assert len(exported) == len(set(exported))
    public = {
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and not isinstance(value, ModuleType)
        and getattr(value, "__module__", "").startswith("flux_sagemaker")
    }
    assert public <= set(exported)
    for name in exported:
        assert hasattr(module, name), name


@pytest.mark.parametrize("module", [flux_sagemaker, flux_sagemaker.testing, flux_sagemaker.errors])
def test_every_exported_class_and_function_has_a_docstring(module: ModuleType) -> None:
    undocumented = [
        name
        for name in module.__all__
        if (inspect.isclass(getattr(module, name)) or inspect.isfunction(getattr(module, name)))
        and not inspect.getdoc(getattr(module, name))
    ]
    assert undocumented == []


def test_errors_are_all_flux_errors_with_a_retryable_flag() -> None:
    for name in flux_sagemaker.errors.__all__:
        cls = getattr(flux_sagemaker.errors, name)
        assert issubclass(cls, flux_sagemaker.FluxError)
        assert isinstance(cls.retryable, bool)


def _flux_classes(hint: object) -> set[type]:
    """The flux_sagemaker classes a type hint names (inside unions and generics too)."""
    if isinstance(hint, type) and hint.__module__.startswith("flux_sagemaker"):
        return {hint}
    return {c for arg in typing.get_args(hint) for c in _flux_classes(arg)}


def test_what_public_methods_and_properties_return_is_exported() -> None:
    """A user can name (import, annotate with) every flux_sagemaker type the API hands back."""
    exported = {
        getattr(module, name)
        for module in (flux_sagemaker, flux_sagemaker.testing, flux_sagemaker.errors)
        for name in module.__all__
    }
    missing = set()
    for cls in [c for c in exported if inspect.isclass(c)]:
        for name, member in vars(cls).items():
            if name.startswith("_"):
                continue
            func = member.fget if isinstance(member, property) else member
            if not callable(func):
                continue
            hints = typing.get_type_hints(func, vars(sys.modules[cls.__module__]))
            for returned in _flux_classes(hints.get("return")):
                if returned not in exported:
                    missing.add(f"{cls.__name__}.{name} -> {returned.__name__}")
    # The HTTP/2 stream under a session is the client's own business; the pool hands it over
    # for FluxClient (and for tests of the transport).
    assert sorted(missing) == ["ConnectionPool.open_stream -> H2Stream"]

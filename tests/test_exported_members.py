"""The public namespaces export exactly what they define, each name documented."""

from __future__ import annotations

import inspect
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

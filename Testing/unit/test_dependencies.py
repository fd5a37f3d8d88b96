"""First use inside Slicer: which Slicer releases run the extension, and the torch releases its installer asks for."""

import importlib.util
import sys
import types

import pytest
from packaging.specifiers import SpecifierSet

from BrainTumorFusionLib.app import dependencies
from BrainTumorFusionLib.errors import BrainTumorFusionError

# torch releases whose fresh install through the PyTorch extension breaks Slicer 5.12 (torch 2.13 needs setuptools
# >= 77 for its PEP 639 license files: Slicer/light-the-torch#176). Add a release here when one is found to break.
BREAKS_SLICER_INSTALL = ("2.13.0", "2.13.1")


@pytest.mark.parametrize("release", BREAKS_SLICER_INSTALL)
def test_the_installer_never_asks_for_a_torch_that_breaks_slicer(release):
    assert release not in SpecifierSet(dependencies.TORCH_REQUIREMENT)


def test_the_installer_admits_the_torch_the_slicer_environment_tests():
    """The lowest release of the range is what `make test-slicer` installs and runs the shipped models on."""
    specifiers = SpecifierSet(dependencies.TORCH_REQUIREMENT)
    lower = [s.version for s in specifiers if s.operator == ">="]
    assert len(lower) == 1 and lower[0] in specifiers


@pytest.mark.parametrize("slicer_version, python_version, supported", [
    ((5, 12), (3, 12), True), ((5, 13), (3, 12), True), ((6, 0), (3, 13), True),
    ((5, 10), (3, 12), False),  # Python 3.12, but bundles pydicom 2.4: the pinned pydicom 3 would replace it
    ((5, 8), (3, 9), False), ((5, 6), (3, 9), False)])
def test_supported_slicer_releases(slicer_version, python_version, supported):
    reason = dependencies.unsupported_reason(slicer_version, python_version)
    assert (reason is None) == supported
    if not supported:
        assert "5.12 or newer" in reason and "download.slicer.org" in reason
        assert f"Slicer {slicer_version[0]}.{slicer_version[1]}" in reason


def test_an_unsupported_slicer_is_refused_before_anything_is_installed(monkeypatch):
    installed = []
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *rest: None)  # every package "missing"
    monkeypatch.setitem(sys.modules, "PyTorchUtils", types.SimpleNamespace(PyTorchUtilsLogic=lambda: installed))
    with pytest.raises(BrainTumorFusionError, match="needs 3D Slicer 5.12 or newer"):
        dependencies.ensure_installed((5, 8), confirm=lambda message: installed.append(message) or True)
    assert installed == []  # not even asked


@pytest.mark.parametrize("version, warned", [("2.12.1", False), ("2.12.1+cu130", False), ("2.12.3", False),
                                             ("2.13.0+cpu", True), ("2.4.1", True)])
def test_a_torch_outside_the_tested_range_is_used_with_a_warning(version, warned):
    warning = dependencies.torch_outside_tested_range(version)
    assert (warning is not None) == warned
    if warned:
        assert version in warning and dependencies.TORCH_REQUIREMENT in warning

"""Python packages the networks need inside Slicer: torch through the PyTorch extension, the rest pinned; and which
Slicer releases can run them, checked before anything is installed."""

import importlib.metadata
import importlib.util
import logging
import sys
from typing import Callable, Optional

from ..engine.catalogue import RESOURCES
from ..errors import BrainTumorFusionError, Cancelled

# Slicer 5.6 / 5.8 bundle Python 3.9, on which the pinned pydicom 3 and highdicom 0.27 do not install; 5.10 bundles
# Python 3.12 but pydicom 2.4 (its DICOM plugins' version) and no highdicom, so installing ours would replace Slicer's
# own pydicom; 5.12 bundles exactly the pinned ones (README, "Supported Slicer releases").
MINIMUM_SLICER = (5, 12)
MINIMUM_PYTHON = (3, 10)
# What the PyTorch extension installs on first use: the releases the tests run (the Slicer-like environment runs the
# lowest, the development one the newest). torch 2.13 needs setuptools >= 77 to install (PEP 639 license files),
# which Slicer 5.12's Python lacks: its install leaves Slicer needing repair (Slicer/light-the-torch#176).
TORCH_REQUIREMENT = ">=2.12.1,<2.13"
REQUIREMENTS_FILE = RESOURCES / "requirements-slicer.txt"
REQUIRED_MODULES = ("torch", "monai", "einops", "tqdm", "SimpleITK", "filelock", "PIL", "pydicom", "highdicom",
                    "slicerio", "nrrd")


def unsupported_reason(slicer_version, python_version=sys.version_info[:2]) -> Optional[str]:
    """Why this Slicer cannot run the extension (None when it can): said at load and at the first Apply."""
    if tuple(slicer_version[:2]) >= MINIMUM_SLICER and tuple(python_version[:2]) >= MINIMUM_PYTHON:
        return None
    have = ".".join(str(v) for v in slicer_version[:2])
    python = ".".join(str(v) for v in python_version[:2])
    return (f"BrainTumorFusion needs 3D Slicer {MINIMUM_SLICER[0]}.{MINIMUM_SLICER[1]} or newer (Python "
            f"{MINIMUM_PYTHON[0]}.{MINIMUM_PYTHON[1]}+); this is Slicer {have} with Python {python}, whose Python "
            "cannot install the packages the extension needs. Install a current Slicer from download.slicer.org; "
            "nothing was installed or changed.")


def check_slicer_supported(slicer_version) -> None:
    reason = unsupported_reason(slicer_version)
    if reason:
        raise BrainTumorFusionError(reason)


def missing_packages() -> list[str]:
    return [name for name in REQUIRED_MODULES if importlib.util.find_spec(name) is None]


def torch_outside_tested_range(version: str) -> Optional[str]:
    """A warning when an installed torch (put there by another extension or by hand) is not one the tests run;
    it is used as it is, never replaced."""
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    if Version(Version(version).base_version) in SpecifierSet(TORCH_REQUIREMENT):  # 2.12.1+cu130 is 2.12.1
        return None
    return (f"PyTorch {version} is installed; BrainTumorFusion is tested with torch{TORCH_REQUIREMENT} and uses the "
            "installed one as it is. If a run fails inside torch, reinstall PyTorch from the PyTorch module.")


def ensure_installed(slicer_version, confirm: Optional[Callable[[str], bool]] = None) -> None:
    """Install what is missing into Slicer's Python, on a supported Slicer only (`slicer_version`: (major, minor)).
    `confirm(message) -> bool` is asked first (GUI); without it (console, batch) installation goes ahead without
    prompts."""
    check_slicer_supported(slicer_version)
    missing = missing_packages()
    if not missing:
        warning = torch_outside_tested_range(importlib.metadata.version("torch"))  # without importing torch
        if warning:
            logging.warning(warning)
        return
    message = (f"BrainTumorFusion needs these Python packages: {', '.join(missing)}. They will be downloaded and "
               "installed into Slicer's Python now (PyTorch through the PyTorch extension); this can take minutes.")
    if confirm is not None and not confirm(message):
        raise Cancelled("Installation of the required Python packages was declined; nothing was run.")
    import slicer.util

    if "torch" in missing:
        try:
            import PyTorchUtils
        except ImportError:
            raise BrainTumorFusionError(
                "PyTorch is missing and the PyTorch extension is not installed. Install 'PyTorch' from the "
                "Extensions Manager, restart Slicer and try again.") from None
        if PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False,
                                                        torchVersionRequirement=TORCH_REQUIREMENT) is None:
            raise BrainTumorFusionError("PyTorch could not be installed; see the Python console for details.")
    if set(missing) - {"torch"}:
        slicer.util.pip_install(["-r", str(REQUIREMENTS_FILE)])


def ensure_skull_stripping_installed(confirm: Optional[Callable[[str], bool]] = None) -> None:
    """Install deepbet (skull_stripping.py) into Slicer's Python, only when an input still has its skull: inputs
    that are already skull-stripped (BraTS style) never need it. `confirm` as in ensure_installed."""
    from ..preparation.skull_stripping import DEEPBET_REQUIREMENT

    if importlib.util.find_spec("deepbet") is not None:
        return
    message = ("The inputs still show the skull. Removing it needs the Python package deepbet (MIT licence; its "
               "networks ship inside its 10 MB wheel, with pandas, nibabel and two small image libraries about "
               "150 MB in all). It will be downloaded and installed into Slicer's Python now.")
    if confirm is not None and not confirm(message):
        raise Cancelled("Installation of deepbet was declined; nothing was run. Give skull-stripped inputs (brain "
                        "only, background exactly zero) or allow the installation.")
    import slicer.util

    slicer.util.pip_install(DEEPBET_REQUIREMENT)

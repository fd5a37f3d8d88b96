"""Python packages the networks need inside Slicer: torch through the PyTorch extension, the rest pinned."""

import importlib.util
from typing import Callable, Optional

from .catalogue import RESOURCES
from .errors import BrainTumorFusionError, Cancelled

TORCH_REQUIREMENT = ">=2.4"
REQUIREMENTS_FILE = RESOURCES / "requirements-slicer.txt"
REQUIRED_MODULES = ("torch", "monai", "einops", "tqdm", "SimpleITK", "filelock", "PIL", "pydicom", "highdicom",
                    "slicerio", "nrrd")


def missing_packages() -> list[str]:
    return [name for name in REQUIRED_MODULES if importlib.util.find_spec(name) is None]


def ensure_installed(confirm: Optional[Callable[[str], bool]] = None) -> None:
    """Install what is missing into Slicer's Python. `confirm(message) -> bool` is asked first (GUI);
    without it (console, batch) installation goes ahead without prompts."""
    missing = missing_packages()
    if not missing:
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
    from .skull_stripping import DEEPBET_REQUIREMENT

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

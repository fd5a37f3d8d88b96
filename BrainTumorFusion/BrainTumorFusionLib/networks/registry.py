"""Name -> network class. `build(name)` with no arguments gives the paper-sized variant."""

import importlib
from typing import Dict, List, Tuple, Type

from torch import nn

# name -> (module, class name, task); modules are imported on first use to keep start-up light.
_NETWORKS = {
    "hafb": ("hafb", "HAFBNet", "segmentation"),
    "missu": ("missu", "MISSU", "segmentation"),
    "transfuse": ("transfuse", "TransFuse3D", "segmentation"),
    "swinfuse": ("swinfuse", "SwinFUSE", "segmentation"),
    "cmg": ("cmg", "CrossModalityGuidedGrader", "grading"),
    "segresnet": ("segresnet", "SegResNetBaseline", "segmentation"),  # MONAI baseline
}
_EXTRA: Dict[str, Tuple[Type[nn.Module], str]] = {}


def register(name: str, cls: Type[nn.Module], task: str = "segmentation") -> None:
    """Add a network class under `name` (used by tests and by users bringing their own network)."""
    _EXTRA[name] = (cls, task)


def available() -> List[str]:
    return sorted(set(_NETWORKS) | set(_EXTRA))


def task_of(name: str) -> str:
    if name in _EXTRA:
        return _EXTRA[name][1]
    if name in _NETWORKS:
        return _NETWORKS[name][2]
    raise KeyError(f"Unknown network '{name}'. Available: {', '.join(available())}.")


def network_class(name: str) -> Type[nn.Module]:
    if name in _EXTRA:
        return _EXTRA[name][0]
    if name not in _NETWORKS:
        raise KeyError(f"Unknown network '{name}'. Available: {', '.join(available())}.")
    module_name, class_name, _ = _NETWORKS[name]
    module = importlib.import_module(f"{__package__}.{module_name}")
    return getattr(module, class_name)


def build(name: str, **config) -> nn.Module:
    """Instantiate network `name` with `config` overriding the paper-sized defaults."""
    return network_class(name)(**config)

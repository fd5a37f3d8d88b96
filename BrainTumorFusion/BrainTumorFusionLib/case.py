"""Case and Result: what flows between the adapters (scene, files) and the Slicer-free core."""

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from .modalities import MODALITIES

# BraTS label values written on disk and in the scene.
LABEL_NECROTIC = 1
LABEL_EDEMA = 2
LABEL_ENHANCING = 4
LABEL_ENHANCING_2023 = 3  # BraTS 2023+ enhancing tumor: read as LABEL_ENHANCING (postprocessing.brats_labels)


@dataclass
class Case:
    """Four co-registered volumes on one grid.

    image: float32 array (4, K, J, I) in MODALITIES order (numpy/Slicer/SimpleITK axis order: slice first);
        channels of absent modalities are zero.
    ijk_to_ras: 4x4 matrix from voxel index (i, j, k) to RAS millimetres.
    present: one bool per modality.
    """

    name: str
    image: np.ndarray
    ijk_to_ras: np.ndarray
    present: tuple[bool, ...]
    warnings: list[str] = field(default_factory=list)
    # Input preparation (preparation.py): the role whose grid this is, how each other input was brought onto it
    # (role -> registration.Alignment), each input's own grid (role -> ((K, J, I) shape, IJK-to-RAS)) and the
    # seconds of each preparation stage ("register", "skull_strip").
    reference_role: str = ""
    alignments: dict = field(default_factory=dict)
    input_grids: dict = field(default_factory=dict)
    stages: dict[str, float] = field(default_factory=dict)

    @property
    def present_modalities(self) -> tuple[str, ...]:
        return tuple(m for m, p in zip(MODALITIES, self.present) if p)

    @property
    def voxel_volume_ml(self) -> float:
        return abs(float(np.linalg.det(self.ijk_to_ras[:3, :3]))) / 1000.0


@dataclass
class Result:
    """What a run gives back: a BraTS label map on the case grid, region volumes, RANO measurements and grade
    probabilities."""

    case_name: str
    labels: np.ndarray  # uint8 (K, J, I), values 0/1/2/4
    ijk_to_ras: np.ndarray
    volumes_ml: dict[str, float]  # NCR, ED, ET, TC, WT
    grade_probabilities: Optional[dict[str, float]] = None  # {"HGG": p, "LGG": p} when grading was asked for
    model: str = ""
    model_choice: str = ""  # with the model "auto": what it chose and why
    device: str = ""
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)
    stages: dict[str, float] = field(default_factory=dict)  # seconds per stage: register, skull_strip, segment
    measurements: Any = None  # measurements.rano.Measurements of the labels (typed loosely: basics import nothing above)

"""Region probabilities -> BraTS labels on the case grid, and region volumes."""

from typing import Sequence

import numpy as np

from .case import LABEL_EDEMA, LABEL_ENHANCING, LABEL_ENHANCING_2023, LABEL_NECROTIC
from .preprocessing import Crop

THRESHOLD = 0.5


def regions_to_labels(probabilities: np.ndarray, threshold: float = THRESHOLD) -> np.ndarray:
    """Nested regions (WT, TC, ET) -> labels: WT outside TC is edema, TC outside ET necrotic core, ET enhancing.

    Tumor core is only kept inside whole tumor and enhancing tumor only inside tumor core, so the labels are
    consistent with the BraTS region definitions whatever the network predicts.
    """
    whole, core, enhancing = (probabilities[i] > threshold for i in range(3))
    core &= whole
    enhancing &= core
    labels = np.zeros(whole.shape, dtype=np.uint8)
    labels[whole] = LABEL_EDEMA
    labels[core] = LABEL_NECROTIC
    labels[enhancing] = LABEL_ENHANCING
    return labels


def uncrop(labels: np.ndarray, crop: Crop, full_shape: Sequence[int]) -> np.ndarray:
    """Labels of the brain crop -> the whole case grid (zero outside the crop)."""
    out = np.zeros(full_shape, dtype=labels.dtype)
    out[crop] = labels
    return out


def region_volumes(labels: np.ndarray, voxel_volume_ml: float) -> dict[str, float]:
    """Volumes in mL of NCR, ED, ET and the composite regions TC = NCR + ET, WT = all tumor."""
    counts = {label: int(np.count_nonzero(labels == label)) for label in (LABEL_NECROTIC, LABEL_EDEMA,
                                                                          LABEL_ENHANCING)}
    ncr, ed, et = counts[LABEL_NECROTIC], counts[LABEL_EDEMA], counts[LABEL_ENHANCING]
    voxels = {"NCR": ncr, "ED": ed, "ET": et, "TC": ncr + et, "WT": ncr + ed + et}
    return {name: round(count * voxel_volume_ml, 3) for name, count in voxels.items()}


def brats_labels(labels: np.ndarray) -> np.ndarray:
    """The one place label 3 (BraTS 2023+ enhancing tumor) is read as 4, the value this project writes."""
    labels = np.asarray(labels)
    return np.where(labels == LABEL_ENHANCING_2023, LABEL_ENHANCING, labels).astype(np.uint8)

"""Region probabilities -> BraTS labels on the case grid, the BraTS clean-up of small islands."""

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from ..case import LABEL_EDEMA, LABEL_ENHANCING, LABEL_ENHANCING_2023, LABEL_NECROTIC
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


@dataclass(frozen=True)
class Cleanup:
    """Connected components smaller than these volumes (mL) are given the label of the region around them: an
    ET island becomes necrotic core, a TC island edema, a WT island background; and a case whose whole ET is
    below `min_enhancing_ml` gets it relabelled necrotic core (nnU-Net's BraTS 2020 rule: a few enhancing
    voxels are usually a false positive, and BraTS scores an empty ET as perfect when there is none).
    0 switches a step off."""

    wt_island_ml: float = 0.0
    tc_island_ml: float = 0.0
    et_island_ml: float = 0.0
    min_enhancing_ml: float = 0.0


def _small_components(mask: np.ndarray, min_voxels: int) -> np.ndarray:
    """Voxels of `mask` in 26-connected components of fewer than `min_voxels` voxels."""
    components = sitk.ConnectedComponent(sitk.GetImageFromArray(mask.astype(np.uint8)), True)
    kept = sitk.GetArrayFromImage(sitk.RelabelComponent(components, minimumObjectSize=int(min_voxels))) > 0
    return mask & ~kept


def clean_labels(labels: np.ndarray, voxel_volume_ml: float, cleanup: Cleanup) -> np.ndarray:
    """Labels after `cleanup` (a copy; nested regions stay nested: islands take the surrounding region's label)."""
    labels = labels.copy()
    steps = ((cleanup.et_island_ml, (LABEL_ENHANCING,), LABEL_NECROTIC),
             (cleanup.tc_island_ml, (LABEL_NECROTIC, LABEL_ENHANCING), LABEL_EDEMA),
             (cleanup.wt_island_ml, (LABEL_NECROTIC, LABEL_EDEMA, LABEL_ENHANCING), 0))
    for volume_ml, region_labels, outer_label in steps:
        if volume_ml > 0:
            region = np.isin(labels, region_labels)
            labels[_small_components(region, int(np.ceil(volume_ml / voxel_volume_ml)))] = outer_label
    enhancing = labels == LABEL_ENHANCING
    if cleanup.min_enhancing_ml > 0 and enhancing.sum() * voxel_volume_ml < cleanup.min_enhancing_ml:
        labels[enhancing] = LABEL_NECROTIC
    return labels


def uncrop(labels: np.ndarray, crop: Crop, full_shape: Sequence[int]) -> np.ndarray:
    """Labels of the brain crop -> the whole case grid (zero outside the crop)."""
    out = np.zeros(full_shape, dtype=labels.dtype)
    out[crop] = labels
    return out


def brats_labels(labels: np.ndarray) -> np.ndarray:
    """The one place label 3 (BraTS 2023+ enhancing tumor) is read as 4, the value this project writes."""
    labels = np.asarray(labels)
    return np.where(labels == LABEL_ENHANCING_2023, LABEL_ENHANCING, labels).astype(np.uint8)

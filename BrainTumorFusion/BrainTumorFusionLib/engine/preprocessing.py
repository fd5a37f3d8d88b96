"""Preprocessing shared by inference and Training: brain crop, resampling to the model spacing, z-score.

Training calls these same functions, so a network always sees inputs normalised exactly as at inference.
"""

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import SimpleITK as sitk

from ..case import Case
from ..preparation.geometry import image_from_array, spacing_of

# Spacings within this relative difference of the model's are used as they are (no resampling).
SPACING_TOLERANCE = 0.05
Crop = tuple[slice, slice, slice]  # (K, J, I) slices of the case grid


@dataclass
class Prepared:
    """Network input and its grids: the brain crop of the case grid and the model grid `image` lies on.

    Callers move data between the grids with the methods, never by combining the fields themselves.
    """

    image: np.ndarray  # float32 (4, D, H, W) at the model spacing, normalised
    crop: Crop  # slices of the case grid that hold the brain
    cropped_shape: tuple[int, int, int]  # shape of the crop on the case grid
    cropped_ijk_to_ras: np.ndarray  # grid of the crop
    model_ijk_to_ras: np.ndarray  # grid of `image` (the crop's own matrix when not resampled)
    resampled: bool  # whether the model grid differs from the crop's (the model asked for another spacing)

    def to_crop_grid(self, array: np.ndarray, interpolator: int = sitk.sitkLinear) -> np.ndarray:
        """(C, ...) data on the model grid (e.g. region probabilities) -> the same channels on the crop's grid."""
        if not self.resampled:
            return array
        return resample_channels(array, self.model_ijk_to_ras, self.cropped_shape, self.cropped_ijk_to_ras,
                                 interpolator)

    def to_model_grid(self, array: np.ndarray, interpolator: int = sitk.sitkLinear) -> np.ndarray:
        """(C, ...) data on the crop's grid -> the same channels on the model grid (float32)."""
        if not self.resampled:
            return array
        return resample_channels(array, self.cropped_ijk_to_ras, self.image.shape[1:], self.model_ijk_to_ras,
                                 interpolator)

    def labels_on_model_grid(self, labels: np.ndarray) -> np.ndarray:
        """A label map on the case grid (K, J, I) -> the model grid: the brain crop, then nearest neighbour."""
        cropped = labels[self.crop]
        if not self.resampled:
            return cropped
        return np.rint(self.to_model_grid(cropped[None], sitk.sitkNearestNeighbor)[0]).astype(np.uint8)


def brain_bounding_box(image: np.ndarray, margin: int = 2) -> Crop:
    """Slices of the smallest box holding every voxel that is non-zero in any channel, plus a margin."""
    foreground = np.any(image != 0, axis=0)
    if not foreground.any():
        return tuple(slice(0, n) for n in foreground.shape)
    slices = []
    for axis in range(foreground.ndim):
        others = tuple(a for a in range(foreground.ndim) if a != axis)
        indices = np.flatnonzero(foreground.any(axis=others))
        slices.append(slice(max(int(indices[0]) - margin, 0), min(int(indices[-1]) + 1 + margin,
                                                                   foreground.shape[axis])))
    return tuple(slices)


def crop_matrix(ijk_to_ras: np.ndarray, crop: Crop) -> np.ndarray:
    """IJK-to-RAS of a crop: the origin moves to the crop's first voxel. Crops are in (K, J, I) order."""
    start_ijk = np.array([crop[2].start, crop[1].start, crop[0].start, 1.0])
    matrix = np.array(ijk_to_ras, dtype=float)
    matrix[:, 3] = matrix @ start_ijk
    return matrix


def normalize(image: np.ndarray, present: Sequence[bool]) -> np.ndarray:
    """Z-score each present channel over its non-zero voxels; background and absent channels stay 0."""
    out = np.zeros_like(image, dtype=np.float32)
    for channel, is_present in enumerate(present):
        if not is_present:
            continue
        values = image[channel]
        mask = values != 0
        if mask.any():
            selected = values[mask].astype(np.float64)
            out[channel][mask] = (selected - selected.mean()) / max(selected.std(), 1e-8)
    return out


def resampled_grid(shape: Sequence[int], ijk_to_ras: np.ndarray,
                   spacing: Sequence[float]) -> tuple[tuple[int, ...], np.ndarray]:
    """Shape and IJK-to-RAS of the same field of view at a new spacing (I, J, K order)."""
    old_spacing = spacing_of(ijk_to_ras)
    new_spacing = np.asarray(spacing, dtype=float)
    size_kji = np.array(shape, dtype=float)
    new_shape = tuple(max(int(round(n * o / s)), 1) for n, o, s in zip(size_kji, old_spacing[::-1],
                                                                         new_spacing[::-1]))
    matrix = np.array(ijk_to_ras, dtype=float)
    directions = matrix[:3, :3] / old_spacing
    matrix[:3, :3] = directions * new_spacing
    # Keep the field of view centred: the first voxel centre moves by half the change of voxel size.
    matrix[:3, 3] = ijk_to_ras[:3, 3] + directions @ ((new_spacing - old_spacing) / 2.0)
    return new_shape, matrix


def needs_resampling(ijk_to_ras: np.ndarray, spacing: Optional[Sequence[float]]) -> bool:
    if spacing is None:
        return False
    current = spacing_of(ijk_to_ras)
    return bool(np.any(np.abs(current - np.asarray(spacing)) > SPACING_TOLERANCE * np.asarray(spacing)))


def resample_channels(image: np.ndarray, ijk_to_ras: np.ndarray, shape: Sequence[int], target_ijk_to_ras: np.ndarray,
                      interpolator: int = sitk.sitkLinear) -> np.ndarray:
    """Resample each channel of (C, K, J, I) onto another grid in physical space."""
    reference = image_from_array(np.zeros(shape, dtype=np.uint8), target_ijk_to_ras)
    out = np.zeros((image.shape[0],) + tuple(shape), dtype=np.float32)
    for channel in range(image.shape[0]):
        moving = image_from_array(image[channel].astype(np.float32, copy=False), ijk_to_ras)
        out[channel] = sitk.GetArrayFromImage(
            sitk.Resample(moving, reference, sitk.Transform(), interpolator, 0.0, sitk.sitkFloat32))
    return out


def prepare(case: Case, spacing: Optional[Sequence[float]] = None) -> Prepared:
    """Crop to the brain, resample to `spacing` (mm, I/J/K order; None keeps the case spacing), normalise."""
    crop = brain_bounding_box(case.image)
    cropped = case.image[(slice(None),) + crop]
    cropped_matrix = crop_matrix(case.ijk_to_ras, crop)
    model_matrix = cropped_matrix
    resampled = needs_resampling(cropped_matrix, spacing)
    if resampled:
        shape, model_matrix = resampled_grid(cropped.shape[1:], cropped_matrix, spacing)
        cropped = resample_channels(cropped, cropped_matrix, shape, model_matrix)
    return Prepared(image=normalize(cropped, case.present), crop=crop,
                    cropped_shape=tuple(s.stop - s.start for s in crop),
                    cropped_ijk_to_ras=cropped_matrix, model_ijk_to_ras=model_matrix, resampled=resampled)

"""Voxel grids: conversion between (array, IJK-to-RAS) and SimpleITK images, grid comparison, resampling,
and the checks on the volumes of a case. Geometry goes through SimpleITK; axes are never flipped by hand."""

from typing import Optional, Sequence

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..modalities import DISPLAY_NAMES, MODALITIES
from .plausibility import brain_sample, correlation

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
# Grids closer than this (mm, or unitless for directions) are the same grid.
GRID_TOLERANCE = 1e-3
# Two roles whose brain voxels correlate more than this hold the same image (a copy, maybe rescaled). Between two
# different sequences of one case the highest on the 27 shared BraTS cases is 0.878 (T1 and T1ce of TCIA10_628).
SAME_IMAGE_CORRELATION = 0.995
# A label map (a segmentation: BraTS 0/1/2/4 or 0-3, a 0/1 mask) holds a handful of small non-negative integers; an
# MR image holds hundreds of values: 212 at the fewest among the 4 x 27 volumes of the shared BraTS cases (T1ce of
# Brats18_2013_11_1, whose largest value, 211, is also the smallest largest value). A volume of 2 to LABEL_VALUES
# distinct integers in 0-LABEL_MAX is refused as a label map (a constant volume is not one).
LABEL_VALUES = 8
LABEL_MAX = 255
# Voxels looked at first (every n-th): an MR image shows a value above LABEL_MAX or more than LABEL_VALUES values
# among them (170 in that T1ce), and only a volume that does not is read in full.
LABEL_SAMPLE = 100_000


def ijk_to_ras_of(image: sitk.Image) -> np.ndarray:
    """4x4 IJK-to-RAS matrix of a SimpleITK image (SimpleITK works in LPS)."""
    spacing = np.array(image.GetSpacing(), dtype=float)
    direction = np.array(image.GetDirection(), dtype=float).reshape(3, 3)
    matrix = np.eye(4)
    matrix[:3, :3] = _LPS_TO_RAS @ direction @ np.diag(spacing)
    matrix[:3, 3] = _LPS_TO_RAS @ np.array(image.GetOrigin(), dtype=float)
    return matrix


def image_from_array(array: np.ndarray, ijk_to_ras: np.ndarray) -> sitk.Image:
    """SimpleITK image of a (K, J, I) array placed by a 4x4 IJK-to-RAS matrix."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    lps = _LPS_TO_RAS @ np.asarray(ijk_to_ras, dtype=float)[:3, :4]
    spacing = np.linalg.norm(lps[:, :3], axis=0)
    if np.any(spacing <= 0):
        raise InputError("The volume has a zero voxel spacing; fix its geometry (Volumes module) and try again.")
    image.SetSpacing(spacing.tolist())
    image.SetDirection((lps[:, :3] / spacing).flatten().tolist())
    image.SetOrigin(lps[:, 3].tolist())
    return image


def spacing_of(ijk_to_ras: np.ndarray) -> np.ndarray:
    """Voxel spacing (mm) along I, J, K."""
    return np.linalg.norm(np.asarray(ijk_to_ras)[:3, :3], axis=0)


def nearest_array_axis(ijk_to_ras: np.ndarray, ras_axis: int) -> int:
    """The array axis (0 = K, 1 = J, 2 = I) whose direction is nearest to RAS axis `ras_axis` (0 R, 1 A, 2 S)."""
    columns = np.asarray(ijk_to_ras, dtype=float)[:3, :3]
    cosine = np.abs(columns[ras_axis]) / np.linalg.norm(columns, axis=0)  # |cosine| with that axis, for i, j, k
    return 2 - int(np.argmax(cosine))  # column i is array axis 2


def same_grid(shape_a: Sequence[int], matrix_a: np.ndarray, shape_b: Sequence[int], matrix_b: np.ndarray) -> bool:
    return tuple(shape_a) == tuple(shape_b) and np.allclose(matrix_a, matrix_b, atol=GRID_TOLERANCE)


def resample_onto(array: np.ndarray, ijk_to_ras: np.ndarray, shape: Sequence[int], target_ijk_to_ras: np.ndarray,
                  interpolator: int = sitk.sitkLinear) -> np.ndarray:
    """Resample a (K, J, I) array onto another grid in physical space; outside the input is 0."""
    moving = image_from_array(array.astype(np.float32, copy=False), ijk_to_ras)
    reference = image_from_array(np.zeros(shape, dtype=np.uint8), target_ijk_to_ras)
    resampled = sitk.Resample(moving, reference, sitk.Transform(), interpolator, 0.0, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(resampled)


def check_volume(role: str, array: np.ndarray) -> None:
    """Reject what no network can use, naming the role and saying what to do."""
    label = DISPLAY_NAMES[role]
    if array.ndim != 3:
        raise InputError(
            f"The {label} volume has {array.ndim} dimensions; a single 3D scalar volume is needed. "
            "Extract one 3D frame (e.g. with the Sequences module) or pick another volume.")
    if array.size == 0:
        raise InputError(f"The {label} volume is empty (no voxels). Load the image again or pick another volume.")
    finite = np.isfinite(array)
    if not finite.any():
        raise InputError(f"Every voxel of the {label} volume is NaN or infinite: it holds no image. Re-export it "
                         "from its source.")
    if not finite.all():
        raise InputError(
            f"The {label} volume contains NaN or infinite voxels. Replace them (e.g. with 0 outside the brain) or "
            "re-export the image, then try again.")
    if not np.any(array):
        raise InputError(
            f"The {label} volume is all zero. Check that the right image is given as {label} (file or selected "
            "volume) and that it loaded correctly.")
    values = label_values(array)
    if values is not None:
        raise InputError(
            f"The {label} volume looks like a label map (a segmentation or mask: its voxels are only the values "
            f"{', '.join(str(value) for value in values)}), not an MR image. Give the {label} image itself (file or "
            "selected volume), not a segmentation such as <id>_seg.nii.gz or a brain mask.")


def label_values(array: np.ndarray) -> Optional[list[int]]:
    """The distinct values of a volume that looks like a label map (LABEL_VALUES), else None. Cheap on an image: a
    strided sample shows it is none; only a volume whose sample looks like labels is read in full."""
    flat = array.reshape(-1)
    for voxels in (flat[:: max(flat.size // LABEL_SAMPLE, 1)], flat):
        if voxels.dtype.kind not in "biu" and not np.array_equal(voxels, np.floor(voxels)):
            return None  # a fraction
        if voxels.min() < 0 or voxels.max() > LABEL_MAX:
            return None
        values = np.unique(voxels)
        if values.size > LABEL_VALUES:
            return None
    return [int(value) for value in values] if values.size > 1 else None


def check_distinct(image: np.ndarray, present_roles: list[str]) -> None:
    """Reject two roles holding the same image: the network would see one sequence twice and another not at all
    (the same T1 in all four roles gave 674 mL of "tumor")."""
    sample = brain_sample(image)
    values = {role: image[MODALITIES.index(role)].ravel()[sample] for role in present_roles}
    for index, first in enumerate(present_roles):
        for second in present_roles[index + 1:]:
            similarity = correlation(values[first], values[second])
            if similarity > SAME_IMAGE_CORRELATION or np.array_equal(values[first], values[second]):
                raise InputError(
                    f"{DISPLAY_NAMES[first]} and {DISPLAY_NAMES[second]} hold the same image (correlation "
                    f"{similarity:.3f} over the brain; different sequences of a BraTS case stay below 0.9). Each role "
                    f"needs its own sequence: check which file or volume is given as {DISPLAY_NAMES[first]} and as "
                    f"{DISPLAY_NAMES[second]}.")

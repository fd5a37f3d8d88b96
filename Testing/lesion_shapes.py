"""Synthetic lesions for the measurement tests: grids (IJK-to-RAS matrices) and BraTS label shapes drawn on them.

A plain module (not conftest.py), so every test folder imports it by one name."""

import numpy as np
import SimpleITK as sitk

from BrainTumorFusionLib.preparation.geometry import image_from_array

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def rotation(axis, degrees: float) -> np.ndarray:
    """3x3 rotation by `degrees` about `axis` (Rodrigues)."""
    axis = np.asarray(axis, dtype=float) / np.linalg.norm(axis)
    angle = np.deg2rad(degrees)
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * cross @ cross


def grid(spacing=(1.0, 1.0, 1.0), turn=None, origin=(0.0, 0.0, 0.0), negate: int = -1) -> np.ndarray:
    """4x4 IJK-to-RAS matrix: columns i, j, k of length `spacing`, turned by the 3x3 `turn`, column `negate` (0, 1,
    2) negated for a left-handed grid."""
    columns = (np.eye(3) if turn is None else np.asarray(turn, dtype=float)) @ np.diag(spacing)
    if negate >= 0:
        columns[:, negate] *= -1
    matrix = np.eye(4)
    matrix[:3, :3] = columns
    matrix[:3, 3] = origin
    return matrix


def rigid(turn, shift) -> np.ndarray:
    """4x4 rigid motion of patient space (RAS)."""
    matrix = np.eye(4)
    matrix[:3, :3] = turn
    matrix[:3, 3] = shift
    return matrix


def ras_to_ijk(ijk_to_ras: np.ndarray, points) -> np.ndarray:
    """Continuous (i, j, k) of RAS points (n, 3)."""
    points = np.atleast_2d(np.asarray(points, dtype=float))
    return (np.linalg.inv(ijk_to_ras) @ np.c_[points, np.ones(len(points))].T).T[:, :3]


def ijk_grid(shape) -> np.ndarray:
    """(K, J, I, 3): the (i, j, k) index of every voxel."""
    k, j, i = np.meshgrid(*[np.arange(n, dtype=float) for n in shape], indexing="ij")
    return np.stack([i, j, k], axis=-1)


def ras_grid(shape, ijk_to_ras: np.ndarray) -> np.ndarray:
    """(K, J, I, 3): the RAS position (mm) of every voxel centre."""
    return ijk_grid(shape) @ ijk_to_ras[:3, :3].T + ijk_to_ras[:3, 3]


def grid_ellipsoid(shape, ijk_to_ras: np.ndarray, centre_ijk, semi_axes_mm) -> np.ndarray:
    """Bool (K, J, I) mask of an ellipsoid whose axes lie along the grid's i, j and k directions (orthogonal columns),
    centred at the continuous index `centre_ijk`, with semi-axes (mm) along i, j, k."""
    spacing = np.linalg.norm(ijk_to_ras[:3, :3], axis=0)
    offsets = (ijk_grid(shape) - np.asarray(centre_ijk, dtype=float)) * spacing
    return np.sum((offsets / np.asarray(semi_axes_mm, dtype=float)) ** 2, axis=-1) <= 1.0


def ellipsoid(shape, ijk_to_ras: np.ndarray, centre_ras, semi_axes_mm, turn=None) -> np.ndarray:
    """Bool (K, J, I) mask of an ellipsoid in patient space: semi-axes (mm) along R, A, S, turned by `turn`."""
    offsets = ras_grid(shape, ijk_to_ras) - np.asarray(centre_ras, dtype=float)
    if turn is not None:
        offsets = offsets @ np.asarray(turn, dtype=float)  # into the ellipsoid's own axes
    return np.sum((offsets / np.asarray(semi_axes_mm, dtype=float)) ** 2, axis=-1) <= 1.0


def ellipse_volume_ml(semi_axes_mm) -> float:
    return 4.0 / 3.0 * np.pi * float(np.prod(semi_axes_mm)) / 1000.0


def tumour(labels: np.ndarray, ijk_to_ras: np.ndarray, centre_ras, semi_axes_mm, core: float = 0.4,
           edema: float = 1.5) -> np.ndarray:
    """Draw a tumour into `labels` (in place, returned): edema out to `edema` times the enhancing ellipsoid, the
    enhancing ellipsoid, a necrotic core of `core` times its size."""
    semi = np.asarray(semi_axes_mm, dtype=float)
    shape = labels.shape
    labels[ellipsoid(shape, ijk_to_ras, centre_ras, semi * edema) & (labels == 0)] = 2
    labels[ellipsoid(shape, ijk_to_ras, centre_ras, semi)] = 4
    if core:
        labels[ellipsoid(shape, ijk_to_ras, centre_ras, semi * core)] = 1
    return labels


def sitk_rigid(turn, shift, centre_ras) -> sitk.AffineTransform:
    """The SimpleITK transform (LPS) of the patient motion x -> turn (x - centre) + centre + shift (RAS)."""
    transform = sitk.AffineTransform(3)
    transform.SetCenter((_LPS_TO_RAS @ np.asarray(centre_ras, dtype=float)).tolist())
    transform.SetMatrix((_LPS_TO_RAS @ np.asarray(turn, dtype=float) @ _LPS_TO_RAS).flatten().tolist())
    transform.SetTranslation((_LPS_TO_RAS @ np.asarray(shift, dtype=float)).tolist())
    return transform


def moved_labels(labels: np.ndarray, ijk_to_ras: np.ndarray, transform: sitk.Transform, shape,
                 target_ijk_to_ras: np.ndarray) -> np.ndarray:
    """The label map of an exam whose anatomy has moved by `transform` (a baseline point, LPS, to where it is now),
    seen on another grid: nearest-neighbour resampling."""
    reference = image_from_array(np.zeros(shape, dtype=np.uint8), target_ijk_to_ras)
    moved = sitk.Resample(image_from_array(labels.astype(np.uint8), ijk_to_ras), reference, transform.GetInverse(),
                          sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return sitk.GetArrayFromImage(moved)

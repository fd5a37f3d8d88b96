"""Enhancing lesions of a label map and their bidimensional (RANO) diameters, in patient space.

A lesion is a 26-connected component of enhancing tumor (as the BraTS lesion-wise scorer counts them): lesions that
touch, even at a corner, are one lesion, as RANO measures coalescent lesions together. Its diameters are measured on
the grid's own slices nearest to axial (the acquired plane of an axial series, as a reader measures it): on each
slice, the longest diameter across its outline and the longest chord perpendicular to it; the slice where their
product is largest gives the lesion's diameters. The outline is the half-way line between enhancing and other
voxels, so each end of a diameter lies within half a voxel of the true margin. Distances are taken in millimetres
through the IJK-to-RAS matrix, so oblique, left-handed and anisotropic grids need no special case.
"""

from dataclasses import dataclass
from typing import Optional

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from ..case import LABEL_ENHANCING
from ..preparation.geometry import nearest_array_axis

_FULL_CONNECTIVITY = np.ones((3, 3, 3), dtype=bool)
_SAMPLES_PER_VOXEL = 4  # along a perpendicular chord: ends are refined between samples, this only finds them
_TIE_MM = 1e-6  # lengths closer than this are equal (they differ by rounding only)
Line = tuple[tuple[float, float, float], tuple[float, float, float]]  # two RAS points (mm)


@dataclass(frozen=True)
class Diameters:
    """The two diameters of a lesion on one slice: lengths (mm), end points (RAS, mm) and the slice's index along
    the grid's axis nearest to axial."""

    longest_mm: float
    perpendicular_mm: float
    longest_line: Line
    perpendicular_line: Line
    slice_index: int

    @property
    def product_mm2(self) -> float:
        return self.longest_mm * self.perpendicular_mm


@dataclass(frozen=True)
class Component:
    """One enhancing lesion: its voxels (a mask on the label map's grid), volume and diameters."""

    mask: np.ndarray  # bool (K, J, I)
    volume_ml: float
    centroid_ras: tuple[float, float, float]
    diameters: Diameters
    thickest_wall_mm: float  # on the measured slice: twice the largest distance from a voxel to the outline
    cavity_fraction: float  # on the measured slice: share of the outline's inside that is not enhancing


def axial_axis(ijk_to_ras: np.ndarray) -> int:
    """The array axis (0 = K, 1 = J, 2 = I) whose direction is nearest to superior-inferior: slices across it are
    the grid's axial slices."""
    return nearest_array_axis(ijk_to_ras, 2)


def slice_thickness_mm(ijk_to_ras: np.ndarray) -> float:
    """Spacing between the grid's axial slices (mm)."""
    return float(np.linalg.norm(np.asarray(ijk_to_ras, dtype=float)[:3, 2 - axial_axis(ijk_to_ras)]))


def enhancing_components(labels: np.ndarray, ijk_to_ras: np.ndarray) -> list[Component]:
    """The enhancing lesions of a BraTS label map (value 4), largest volume first."""
    components, count = ndimage.label(labels == LABEL_ENHANCING, structure=_FULL_CONNECTIVITY)
    voxel_ml = abs(float(np.linalg.det(np.asarray(ijk_to_ras)[:3, :3]))) / 1000.0
    result = []
    for index, box in enumerate(ndimage.find_objects(components), start=1):
        mask = np.zeros(labels.shape, dtype=bool)
        mask[box] = components[box] == index
        result.append(_component(mask, box, ijk_to_ras, voxel_ml))
    return sorted(result, key=lambda component: -component.volume_ml)


def _component(mask: np.ndarray, box: tuple[slice, ...], ijk_to_ras: np.ndarray, voxel_ml: float) -> Component:
    matrix = np.asarray(ijk_to_ras, dtype=float)
    kji = np.argwhere(mask[box]) + [s.start for s in box]
    centroid = matrix[:3, :3] @ kji.mean(axis=0)[::-1] + matrix[:3, 3]
    axis = axial_axis(matrix)
    best, best_slice = None, None
    for index in range(box[axis].start, box[axis].stop):
        plane = _Plane(matrix, axis, index, np.take(mask, index, axis=axis))
        diameters = plane.diameters()
        if diameters and (best is None or diameters.product_mm2 > best.product_mm2):
            best, best_slice = diameters, plane
    wall, cavity = best_slice.wall()
    return Component(mask=mask, volume_ml=round(len(kji) * voxel_ml, 4),
                     centroid_ras=tuple(round(float(c), 3) for c in centroid), diameters=best,
                     thickest_wall_mm=wall, cavity_fraction=cavity)


class _Plane:
    """One axial slice of a lesion: its 2-D mask, with the two in-plane array axes mapped to patient space."""

    def __init__(self, ijk_to_ras: np.ndarray, axis: int, index: int, mask: np.ndarray):
        self.mask, self.index = mask, index
        in_plane = [a for a in range(3) if a != axis]  # array axes, in order (the mask's rows, then columns)
        columns = ijk_to_ras[:3, :3]
        self.steps = np.stack([columns[:, 2 - a] for a in in_plane], axis=1)  # RAS (mm) per row, per column step
        origin = np.zeros(3)
        origin[2 - axis] = index
        self.origin = ijk_to_ras[:3, :3] @ origin + ijk_to_ras[:3, 3]
        # Orthonormal in-plane basis, so that 2-D distances are millimetres even on a sheared grid.
        self.basis, _ = np.linalg.qr(self.steps)
        self.to_plane = self.basis.T @ self.steps  # (row, column) index -> 2-D mm

    def ras(self, point_2d: np.ndarray) -> tuple[float, float, float]:
        return tuple(round(float(c), 3) for c in self.origin + self.basis @ point_2d)

    def outline(self) -> np.ndarray:
        """2-D points (mm) half-way between each enhancing pixel and each non-enhancing 4-neighbour."""
        padded = np.pad(self.mask, 1)
        points = []
        for axis in range(2):
            for step in (-1, 1):
                outside = ~np.roll(padded, -step, axis=axis)
                edge = np.argwhere(padded & outside).astype(float) - 1
                edge[:, axis] += step / 2
                points.append(edge)
        return np.concatenate(points) @ self.to_plane.T

    def diameters(self) -> Optional[Diameters]:
        if not self.mask.any():
            return None
        outline = self.outline()
        try:
            points = outline[ConvexHull(outline).vertices]
        except (QhullError, ValueError):  # all points on one line: every point may be an end
            points = outline
        distances = np.linalg.norm(points[:, None] - points[None], axis=-1)
        # A pixelated outline often has several equally long diameters (mirror images): take the one with the longest
        # perpendicular chord, so that the choice does not follow rounding, nor where the grid lies in patient space.
        ties = np.argwhere(np.triu(distances >= distances.max() - _TIE_MM, k=1))
        best = None
        for first, second in ties:
            start, end = points[first], points[second]
            longest = float(distances[first, second])
            along = (end - start) / longest
            across = np.array([-along[1], along[0]])
            chord_start, chord_end = self._longest_chord(outline, start, along, longest, across)
            perpendicular = float(np.linalg.norm(chord_end - chord_start))
            if best is None or perpendicular > best[1] + _TIE_MM:
                best = (longest, perpendicular, start, end, chord_start, chord_end)
        longest, perpendicular, start, end, chord_start, chord_end = best
        return Diameters(longest_mm=round(longest, 2), perpendicular_mm=round(perpendicular, 2),
                         longest_line=(self.ras(start), self.ras(end)),
                         perpendicular_line=(self.ras(chord_start), self.ras(chord_end)),
                         slice_index=self.index)

    def _longest_chord(self, outline: np.ndarray, start: np.ndarray, along: np.ndarray, length: float,
                       across: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """End points (2-D mm) of the longest chord across the lesion perpendicular to `along`: lines across,
        sampled finely along the longest diameter, each from its first to its last point inside the outline."""
        step = float(np.min(np.linalg.norm(self.to_plane, axis=0))) / _SAMPLES_PER_VOXEL
        to_index = np.linalg.inv(self.to_plane)
        reach = np.abs((outline - start) @ across)  # how far the lesion extends either side
        half = float(reach.max()) + step
        # symmetric samples: the same points whichever end is `start` and whichever way `across` points
        positions = np.linspace(0.0, length, int(np.ceil(length / step)) + 1)
        offsets = np.linspace(-half, half, 2 * int(np.ceil(half / step)) + 1)
        points = start + positions[:, None, None] * along + offsets[None, :, None] * across  # (lines, samples, 2)
        indices = points @ to_index.T
        values = ndimage.map_coordinates(self.mask.astype(np.float32), indices.reshape(-1, 2).T, order=1,
                                         cval=0.0).reshape(indices.shape[:2])
        inside = values >= 0.5
        best, ends = -1.0, (start, start)
        for line, row in enumerate(inside):
            hits = np.flatnonzero(row)
            if not len(hits):
                continue
            low = _crossing(values[line], hits[0], -1, offsets)
            high = _crossing(values[line], hits[-1], 1, offsets)
            if high - low > best:
                best = high - low
                base = start + positions[line] * along
                ends = (base + low * across, base + high * across)
        return ends

    def wall(self) -> tuple[float, float]:
        """(The thickest enhancing wall (mm): twice the largest distance from an enhancing pixel to the nearest
        other pixel; the share of the filled outline that is not enhancing: a cavity or necrotic centre)."""
        filled = ndimage.binary_fill_holes(self.mask)
        spacing = np.linalg.norm(self.to_plane, axis=0)
        depth = ndimage.distance_transform_edt(np.pad(self.mask, 1), sampling=spacing)
        cavity = 1.0 - self.mask.sum() / max(int(filled.sum()), 1)
        # the deepest pixel's distance reaches the centre of the first pixel outside: half a pixel too far per side
        return round(2 * float(depth.max()) - float(spacing.min()), 2), round(float(cavity), 3)


def _crossing(values: np.ndarray, index: int, direction: int, offsets: np.ndarray) -> float:
    """Where the sampled profile crosses 0.5 between an inside sample and its outside neighbour (linear)."""
    outside = index + direction
    if not 0 <= outside < len(values):
        return float(offsets[index])
    inside_value, outside_value = float(values[index]), float(values[outside])
    fraction = (inside_value - 0.5) / max(inside_value - outside_value, 1e-9)
    return float(offsets[index] + direction * fraction * (offsets[1] - offsets[0]))

"""RANO measurements of one exam from its label map: each enhancing lesion's volume, diameters and whether it is
measurable, the target lesions and the sum of their products of perpendicular diameters (SPD), region volumes.

Choices where RANO leaves room (also in the README):
- measurable: both diameters at least 10 mm, or twice the slice thickness on slices thicker than 5 mm (RANO 2.0);
- target lesions: the measurable lesions with the largest products, at most three (RANO 2.0; RANO 2010 took five);
- a necrotic or cystic centre is not measured separately: a lesion is measured across its enhancing outline, and one
  whose enhancing part is only a thin rim around a cavity (no wall of 10 mm, RANO's measurable nodule) is flagged,
  because RANO measures a cystic or surgical cavity only by its nodular part - a reader decides.
"""

from dataclasses import dataclass, field, replace
from typing import Any, Optional

import numpy as np

from .lesions import Component, Line, enhancing_components, slice_thickness_mm
from .regions import region_volumes

MEASURABLE_MM = 10.0
THICK_SLICE_FACTOR = 2.0  # on thick slices a measurable diameter is at least this many slice thicknesses
TARGET_LESIONS = 3
CAVITY_FRACTION = 0.25  # a lesion whose filled outline is at least this share non-enhancing has a cavity (or core)
METHOD = ("RANO bidimensional: enhancing lesions as 26-connected components; diameters on the grid's axial slices; "
          f"measurable when both are at least {MEASURABLE_MM:g} mm (or {THICK_SLICE_FACTOR:g} slice thicknesses); "
          f"SPD over up to {TARGET_LESIONS} target lesions, the largest products")


@dataclass(frozen=True)
class Lesion:
    """One enhancing lesion as reported: numbered from 1 by volume, largest first."""

    number: int
    volume_ml: float
    longest_mm: float
    perpendicular_mm: float
    slice_index: int  # along the grid's axis nearest to axial
    longest_line: Line
    perpendicular_line: Line
    centroid_ras: tuple[float, float, float]
    measurable: bool
    target: bool = False
    thin_rim: bool = False  # only a thin enhancing rim around a cavity or necrotic centre
    thickest_wall_mm: float = 0.0  # on the measured slice (lesions.Component)
    note: str = ""

    @property
    def product_mm2(self) -> float:
        return round(self.longest_mm * self.perpendicular_mm, 1)

    def as_json(self) -> dict[str, Any]:
        return {"number": self.number, "volume_ml": self.volume_ml, "measurable": self.measurable,
                "target": self.target, "longest_mm": self.longest_mm, "perpendicular_mm": self.perpendicular_mm,
                "product_mm2": self.product_mm2, "slice_index": self.slice_index,
                "longest_line_ras": [list(point) for point in self.longest_line],
                "perpendicular_line_ras": [list(point) for point in self.perpendicular_line],
                "centroid_ras": list(self.centroid_ras), "thin_rim": self.thin_rim,
                "thickest_wall_mm": self.thickest_wall_mm, "note": self.note}


@dataclass(frozen=True)
class Measurements:
    """RANO measurements of one exam. `components`: the lesions' voxels on the label map's grid, numbered as the
    lesions (0 elsewhere), for matching lesions between exams; not part of the record."""

    lesions: tuple[Lesion, ...]
    volumes_ml: dict[str, float]
    slice_thickness_mm: float
    measurable_mm: float  # the smallest measurable diameter on these slices
    components: Optional[np.ndarray] = field(default=None, repr=False, compare=False)
    ijk_to_ras: Optional[np.ndarray] = field(default=None, repr=False, compare=False)  # the components' grid

    @property
    def targets(self) -> tuple[Lesion, ...]:
        return tuple(lesion for lesion in self.lesions if lesion.target)

    @property
    def spd_mm2(self) -> float:
        """Sum of the products of perpendicular diameters of the target lesions."""
        return round(sum(lesion.product_mm2 for lesion in self.targets), 1)

    @property
    def measurable_count(self) -> int:
        return sum(lesion.measurable for lesion in self.lesions)

    def as_json(self) -> dict[str, Any]:
        return {"method": METHOD, "slice_thickness_mm": self.slice_thickness_mm,
                "measurable_mm": self.measurable_mm, "lesion_count": len(self.lesions),
                "measurable_count": self.measurable_count, "target_count": len(self.targets),
                "spd_mm2": self.spd_mm2, "volumes_ml": self.volumes_ml,
                "lesions": [lesion.as_json() for lesion in self.lesions]}

    def with_diameters(self, number: int, longest_mm: float, perpendicular_mm: float) -> "Measurements":
        """These measurements with one lesion's diameters replaced (a reader's correction); targets, the SPD and
        measurability follow."""
        lesions = [lesion if lesion.number != number else _replace(lesion, longest_mm, perpendicular_mm,
                                                                   self.measurable_mm)
                   for lesion in self.lesions]
        return replace(self, lesions=_with_targets(lesions))


def measurable_mm(thickness_mm: float) -> float:
    return max(MEASURABLE_MM, THICK_SLICE_FACTOR * thickness_mm) if thickness_mm > 5.0 else MEASURABLE_MM


def measure(labels: np.ndarray, ijk_to_ras: np.ndarray) -> Measurements:
    """RANO measurements of a BraTS label map (values 0/1/2/4) on the grid of `ijk_to_ras`."""
    thickness = slice_thickness_mm(ijk_to_ras)
    smallest = measurable_mm(thickness)
    components = enhancing_components(labels, ijk_to_ras)
    numbered = np.zeros(labels.shape, dtype=np.uint16)
    lesions = []
    for number, component in enumerate(components, start=1):
        numbered[component.mask] = number
        lesions.append(_lesion(number, component, smallest))
    voxel_ml = abs(float(np.linalg.det(np.asarray(ijk_to_ras)[:3, :3]))) / 1000.0
    return Measurements(_with_targets(lesions), region_volumes(labels, voxel_ml), round(thickness, 3),
                        round(smallest, 2), numbered, np.asarray(ijk_to_ras, dtype=float))


def _lesion(number: int, component: Component, smallest: float) -> Lesion:
    diameters = component.diameters
    thin_rim = component.cavity_fraction >= CAVITY_FRACTION and component.thickest_wall_mm < MEASURABLE_MM
    lesion = Lesion(number=number, volume_ml=component.volume_ml, longest_mm=diameters.longest_mm,
                    perpendicular_mm=diameters.perpendicular_mm, slice_index=diameters.slice_index,
                    longest_line=diameters.longest_line, perpendicular_line=diameters.perpendicular_line,
                    centroid_ras=component.centroid_ras, measurable=False, thin_rim=thin_rim,
                    thickest_wall_mm=component.thickest_wall_mm)
    return _replace(lesion, diameters.longest_mm, diameters.perpendicular_mm, smallest)


def _replace(lesion: Lesion, longest_mm: float, perpendicular_mm: float, smallest: float) -> Lesion:
    """The lesion with these diameters, its measurability and note following them."""
    longest_mm, perpendicular_mm = round(float(longest_mm), 2), round(float(perpendicular_mm), 2)
    measurable = min(longest_mm, perpendicular_mm) >= smallest
    note = ""
    if not measurable:
        note = f"not measurable: a diameter under {smallest:g} mm"
    elif lesion.thin_rim:
        note = (f"thin enhancing rim (thickest wall {lesion.thickest_wall_mm:g} mm) around a cavity or necrotic "
                "centre: RANO measures a cystic or surgical cavity only by a nodular part of 10 mm; check")
    return replace(lesion, longest_mm=longest_mm, perpendicular_mm=perpendicular_mm, measurable=measurable,
                   note=note)


def _with_targets(lesions: list[Lesion]) -> tuple[Lesion, ...]:
    """The lesions with `target` set on the measurable ones of largest product (at most TARGET_LESIONS)."""
    ranked = sorted((lesion for lesion in lesions if lesion.measurable), key=lambda lesion: -lesion.product_mm2)
    targets = {lesion.number for lesion in ranked[:TARGET_LESIONS]}
    return tuple(replace(lesion, target=lesion.number in targets) for lesion in lesions)

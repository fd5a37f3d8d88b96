"""A follow-up exam compared with its baseline: changes in volumes and in the SPD, lesions matched, new and vanished,
and the imaging-only response category by RANO's thresholds.

Bidimensional (RANO 2010 / 2.0): complete response when every enhancing lesion is gone; progression when the SPD
grows by 25 % or more, a new measurable lesion appears, or measurable disease appears where the baseline had none;
partial response when the SPD falls by 50 % or more without new measurable lesions; stable otherwise. Volumetric
(RANO 2.0): the same with the enhancing volume, -65 % and +40 %, when the baseline has at least 1 mL to measure.
The baseline is the reference (RANO compares with the nadir: give the exam with the smallest disease as baseline).
Clinical criteria (steroid dose, clinical status) and confirmation on a later exam are not assessed: every category
says so.
"""

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ..preparation.geometry import image_from_array
from .rano import Measurements
from .regions import REGIONS

PROGRESSION_SPD = 0.25
RESPONSE_SPD = -0.50
PROGRESSION_VOLUME = 0.40
RESPONSE_VOLUME = -0.65
VOLUMETRIC_MINIMUM_ML = 1.0  # RANO 2.0: an enhancing volume below this is not measurable volumetrically
MATCH_MM = 5.0  # a follow-up lesion within this distance of a baseline lesion (after registration) is that lesion
CAVEAT = "imaging only: clinical criteria (steroids, clinical status) not assessed"
CONFIRM = "RANO asks for confirmation on an exam at least 4 weeks later"

COMPLETE, PARTIAL, STABLE, PROGRESSION = ("complete response", "partial response", "stable disease",
                                          "progressive disease")


@dataclass(frozen=True)
class Comparison:
    baseline: Measurements
    follow_up: Measurements
    matches: tuple[tuple[int, int], ...]  # (baseline lesion number, follow-up lesion number)
    new_lesions: tuple[int, ...]  # follow-up lesion numbers with no baseline lesion
    vanished_lesions: tuple[int, ...]  # baseline lesion numbers with no follow-up lesion
    category: str  # bidimensional (SPD)
    volumetric_category: str
    reasons: tuple[str, ...]  # why, in words, both categories

    @property
    def new_measurable_lesions(self) -> tuple[int, ...]:
        measurable = {lesion.number for lesion in self.follow_up.lesions if lesion.measurable}
        return tuple(number for number in self.new_lesions if number in measurable)

    def changes(self) -> dict[str, Any]:
        """Baseline, follow-up, change and relative change (None from zero) of each volume and of the SPD."""
        pairs = {f"{region}_ml": (self.baseline.volumes_ml[region], self.follow_up.volumes_ml[region])
                 for region in REGIONS}
        pairs["spd_mm2"] = (self.baseline.spd_mm2, self.follow_up.spd_mm2)
        return {name: {"baseline": before, "follow_up": after, "change": round(after - before, 3),
                       "relative": relative(before, after)} for name, (before, after) in pairs.items()}

    def label(self, category: Optional[str] = None) -> str:
        """A category as it is shown: always with the imaging-only caveat."""
        category = category or self.category
        confirm = f"; {CONFIRM}" if category in (COMPLETE, PARTIAL) else ""
        return f"{category} ({CAVEAT}{confirm})"

    def as_json(self) -> dict[str, Any]:
        return {"category": self.category, "category_label": self.label(),
                "volumetric_category": self.volumetric_category,
                "volumetric_category_label": self.label(self.volumetric_category), "caveat": CAVEAT,
                "reasons": list(self.reasons), "changes": self.changes(),
                "matched_lesions": [{"baseline": b, "follow_up": f} for b, f in self.matches],
                "new_lesions": list(self.new_lesions), "new_measurable_lesions": list(self.new_measurable_lesions),
                "vanished_lesions": list(self.vanished_lesions),
                "baseline": self.baseline.as_json(), "follow_up": self.follow_up.as_json()}


def relative(before: float, after: float) -> Optional[float]:
    return round((after - before) / before, 4) if before else None


def compare(baseline: Measurements, follow_up: Measurements, transform: Optional[sitk.Transform] = None
            ) -> Comparison:
    """Compare two exams' measurements. `transform` maps a baseline point (LPS, mm) to the same anatomy in the
    follow-up (SimpleITK's convention, as registration.align gives it): the identity when they lie in one space."""
    matches = _match(baseline, follow_up, transform or sitk.Transform())
    matched_baseline = {b for b, _ in matches}
    matched_follow_up = {f for _, f in matches}
    new = tuple(lesion.number for lesion in follow_up.lesions if lesion.number not in matched_follow_up)
    vanished = tuple(lesion.number for lesion in baseline.lesions if lesion.number not in matched_baseline)
    new_measurable = [number for number in new if follow_up.lesions[number - 1].measurable]
    reasons = []
    category = _bidimensional(baseline, follow_up, new_measurable, reasons)
    volumetric = _volumetric(baseline, follow_up, new_measurable, reasons)
    return Comparison(baseline, follow_up, tuple(sorted(matches)), new, vanished, category, volumetric,
                      tuple(reasons))


def _bidimensional(baseline: Measurements, follow_up: Measurements, new_measurable: list[int],
                   reasons: list[str]) -> str:
    change = relative(baseline.spd_mm2, follow_up.spd_mm2)
    if baseline.lesions and not follow_up.lesions:
        reasons.append("every enhancing lesion of the baseline is gone")
        return COMPLETE
    if new_measurable:
        reasons.append(f"new measurable lesion{'s' if len(new_measurable) > 1 else ''} "
                       f"{', '.join(map(str, new_measurable))} on the follow-up")
        return PROGRESSION
    if not baseline.spd_mm2:
        if follow_up.spd_mm2:
            reasons.append("measurable enhancing disease appeared where the baseline had none")
            return PROGRESSION
        reasons.append("no measurable enhancing disease on the baseline: the SPD cannot show a response")
        return STABLE
    said = f"SPD {baseline.spd_mm2:g} -> {follow_up.spd_mm2:g} mm2 ({change:+.0%})"
    return _by_change(change, said, PROGRESSION_SPD, RESPONSE_SPD, reasons)


def _volumetric(baseline: Measurements, follow_up: Measurements, new_measurable: list[int],
                reasons: list[str]) -> str:
    before, after = baseline.volumes_ml["ET"], follow_up.volumes_ml["ET"]
    if baseline.lesions and not follow_up.lesions:
        return COMPLETE
    if new_measurable:
        return PROGRESSION
    if before < VOLUMETRIC_MINIMUM_ML:
        reasons.append(f"volumetric: the baseline's enhancing volume ({before:g} mL) is below "
                       f"{VOLUMETRIC_MINIMUM_ML:g} mL, too small to judge by percentage")
        return PROGRESSION if after >= VOLUMETRIC_MINIMUM_ML else STABLE
    change = relative(before, after)
    said = f"volumetric: enhancing volume {before:g} -> {after:g} mL ({change:+.0%})"
    return _by_change(change, said, PROGRESSION_VOLUME, RESPONSE_VOLUME, reasons)


def _by_change(change: float, said: str, progression: float, response: float, reasons: list[str]) -> str:
    """The category of a relative change by RANO's thresholds, its reason appended to `reasons`."""
    if change >= progression:
        reasons.append(f"{said}: an increase of {progression:.0%} or more")
        return PROGRESSION
    if change <= response:
        reasons.append(f"{said}: a decrease of {-response:.0%} or more")
        return PARTIAL
    reasons.append(f"{said}: within {response:+.0%} to {progression:+.0%}")
    return STABLE


def _match(baseline: Measurements, follow_up: Measurements, transform: sitk.Transform) -> set[tuple[int, int]]:
    """(baseline, follow-up) lesion numbers of lesions that overlap, or lie within MATCH_MM, once the follow-up's
    lesions are brought onto the baseline grid."""
    if not baseline.lesions or not follow_up.lesions:
        return set()
    grid = image_from_array(np.zeros(baseline.components.shape, dtype=np.uint8), baseline.ijk_to_ras)
    moved = sitk.Resample(image_from_array(follow_up.components, follow_up.ijk_to_ras), grid, transform,
                          sitk.sitkNearestNeighbor, 0, sitk.sitkUInt16)
    moved = sitk.GetArrayFromImage(moved)
    spacing = np.linalg.norm(baseline.ijk_to_ras[:3, :3], axis=0)[::-1]  # (K, J, I) order
    distance, nearest = ndimage.distance_transform_edt(baseline.components == 0, sampling=spacing,
                                                       return_indices=True)
    near = np.where(distance <= MATCH_MM, baseline.components[tuple(nearest)], 0)
    pairs = set()
    for follow_number in range(1, len(follow_up.lesions) + 1):
        hits = np.unique(near[moved == follow_number])
        pairs |= {(int(b), follow_number) for b in hits if b}
    return pairs

"""A follow-up exam against its baseline: both segmented and measured, the follow-up registered rigidly onto the
baseline (the registration the input preparation uses, between the two exams' reference sequences), then compared
(measurements.response)."""

from dataclasses import dataclass
from typing import Optional

import SimpleITK as sitk

from ..case import Case, Result
from ..measurements.rano import Measurements
from ..measurements.response import Comparison, compare
from ..modalities import MODALITIES
from ..preparation.geometry import ijk_to_ras_of, image_from_array, same_grid
from ..preparation.registration import HEAD_ALIGNED, Alignment, align
from ..progress import Progress, ShouldCancel, share
from .pipeline import Pipeline


@dataclass
class FollowUp:
    baseline: Result
    follow_up: Result
    alignment: Alignment  # how the follow-up was brought onto the baseline (transform: baseline -> follow-up)
    comparison: Comparison
    warnings: list[str]


def reference_image(case: Case):
    """The case's reference sequence (the grid its labels lie on) as a SimpleITK image."""
    return image_from_array(case.image[MODALITIES.index(case.reference_role)], case.ijk_to_ras)


def compare_exams(baseline: Case, follow_up: Case, pipeline: Pipeline, progress: Optional[Progress] = None,
                  should_cancel: ShouldCancel = None) -> FollowUp:
    """Segment both exams, register the follow-up's reference sequence rigidly onto the baseline's, and compare
    the measurements."""
    report = progress or (lambda fraction, message: None)
    baseline_result = pipeline.run(baseline, share(report, 0.0, 0.4, "Baseline"), should_cancel)
    follow_up_result = pipeline.run(follow_up, share(report, 0.4, 0.8, "Follow-up"), should_cancel)
    comparison, alignment, warnings = compare_measured(
        baseline_result.measurements, reference_image(baseline), follow_up_result.measurements,
        reference_image(follow_up), share(report, 0.8, 1.0), should_cancel)
    return FollowUp(baseline_result, follow_up_result, alignment, comparison, warnings)


def compare_measured(baseline: Measurements, baseline_image: sitk.Image, follow_up: Measurements,
                     follow_up_image: sitk.Image, progress: Optional[Progress] = None,
                     should_cancel: ShouldCancel = None) -> tuple[Comparison, Alignment, list[str]]:
    """(Comparison, how the follow-up was registered onto the baseline, warnings) of two measured exams, each with
    the image its labels lie on (its reference sequence, e.g. T1ce)."""
    report = progress or (lambda fraction, message: None)
    part = share(report, 0.0, 0.95, "Follow-up onto baseline")
    # Exams on one grid whose heads already coincide (one exam given twice, or registered before) stay as they are.
    alignment, warnings = align(baseline_image, follow_up_image, "t1ce", "t1ce", part, should_cancel, register=False)
    aligned = alignment.overlap_after >= HEAD_ALIGNED and same_grid(
        baseline_image.GetSize(), ijk_to_ras_of(baseline_image), follow_up_image.GetSize(),
        ijk_to_ras_of(follow_up_image))
    if not aligned:
        alignment, warnings = align(baseline_image, follow_up_image, "t1ce", "t1ce", part, should_cancel)
        if not alignment.registered and alignment.overlap_after >= HEAD_ALIGNED:
            warnings = []  # registration found nothing better than the headers' placement, which is good
    comparison = compare(baseline, follow_up, alignment.transform)
    report(1.0, "Compared")
    return comparison, alignment, [f"Follow-up onto baseline: {warning}" for warning in warnings]

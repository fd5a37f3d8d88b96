"""Is the content plausible? Inputs unlike the images the models were trained on, or where accuracy is known to
drop, and results outside what BraTS cases show. Each warning is one sentence: what it means for the result and
what to do; they travel in Case.warnings / Result.warnings.

Ranges were measured on the 27 shared BraTS cases (../shared/data/brats) and given a margin, so none of the
warnings fires there. Leave-one-out (Testing/benchmarks/bench_plausibility.py, docs/benchmarks.md): against the
range of the other 26 cases, a case lies at most 55 mL outside in brain volume, 0.04 in neighbour correlation and
0.19 / 0.26 / 0.43 / 0.26 in T1 / T1ce / T2 / FLAIR skewness; every margin below is larger, so no shared case warns
even when it is not part of the range it is checked against."""

from typing import Optional, Sequence

import numpy as np
import SimpleITK as sitk

from ..case import Case
from ..modalities import DISPLAY_NAMES, MODALITIES, display
from .registration import HEAD_ALIGNED, head_mask

# Brain voxels sampled for correlations and skewness: enough for 3 decimals, cheap on a 240³ grid.
SAMPLE = 20000
MAX_SLICE_MM = 3.0  # the models were trained on 1 mm voxels
MIN_EXTENT_MM = 100.0  # an adult brain is about 140 x 170 x 120 mm
# Non-zero voxels of the input (the skull-stripped brain): 1146-1729 mL on the shared cases.
BRAIN_ML = (800.0, 2200.0)
BRAIN_MEASURED = "1150-1730 mL"
# Whole tumor of the reference labels: 14.8-217.4 mL on the shared cases.
TUMOR_ML = (5.0, 350.0)
TUMOR_MEASURED = "15-217 mL"
# Correlation of each brain voxel with its neighbour along I: 0.665-0.983 on the shared cases, about 0 for noise.
MIN_NEIGHBOUR_CORRELATION = 0.3
# The words of the warning for an input that looks like noise; such a case is never graded.
NO_ANATOMY = " shows no anatomy "
# Skewness of each modality's brain voxels: T1 -1.51 to -0.10, T1ce -1.04 to 4.14, T2 0.06 to 2.39, FLAIR -1.47
# to 1.89 on the shared cases; about 0.75 of margin either side. It tells T1 (negative: dark fluid) from T2
# (positive: bright fluid), so swapped roles show.
SKEWNESS = {"t1": (-2.3, 0.65), "t1ce": (-1.8, 4.9), "t2": (-0.7, 3.15), "flair": (-2.2, 2.65)}


def brain_sample(image: np.ndarray) -> np.ndarray:
    """Flat indices of about SAMPLE voxels spread over the brain (non-zero in any channel of (C, K, J, I))."""
    brain = np.flatnonzero(np.any(image != 0, axis=0))
    return brain[:: max(brain.size // SAMPLE, 1)]


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation; 0 where either side is constant (no pattern to share)."""
    a, b = a - a.mean(), b - b.mean()
    scale = np.sqrt(np.dot(a, a) * np.dot(b, b))
    return float(np.dot(a, b) / scale) if scale > 0 else 0.0


def skewness(values: np.ndarray) -> float:
    centred = values - values.mean()
    spread = np.sqrt(np.mean(centred ** 2))
    return float(np.mean(centred ** 3) / spread ** 3) if spread > 0 else 0.0


def grid_warnings(grids: dict[str, tuple[Sequence[int], Sequence[float]]]) -> list[str]:
    """Thick slices and a field of view smaller than a brain, from each role's own grid: role -> ((K, J, I) shape,
    I/J/K spacing in mm)."""
    thick = {role: max(spacing) for role, (_, spacing) in grids.items() if max(spacing) > MAX_SLICE_MM}
    extents = {role: min(n * s for n, s in zip(shape[::-1], spacing)) for role, (shape, spacing) in grids.items()}
    small = {role: extent for role, extent in extents.items() if extent < MIN_EXTENT_MM}
    warnings = []
    if thick:
        warnings.append(
            f"{display(thick)} {'has' if len(thick) == 1 else 'have'} {max(thick.values()):.1f} mm slices: the "
            "models were trained on 1 mm images and overestimate the tumor on thick slices (whole tumor +37 % at "
            "5 mm); use a thin-slice (3D) series if there is one.")
    if small:
        warnings.append(
            f"{display(small)} {'covers' if len(small) == 1 else 'cover'} only {min(small.values()):.0f} mm along "
            "one axis, less than a brain: tumor outside it is missed and the volumes are too small; use a series "
            "that covers the whole brain.")
    return warnings


def case_warnings(case: Case) -> list[str]:
    """Missing FLAIR or T1ce, a brain volume outside the BraTS range, and modalities whose intensities look unlike MR
    images of their role."""
    warnings = []
    if not case.present[MODALITIES.index("flair")]:
        warnings.append(
            "FLAIR is missing: whole-tumor accuracy drops without it (hafb: Dice 0.630 instead of 0.822 on 17 "
            "cases); give the FLAIR series if there is one.")
    if not case.present[MODALITIES.index("t1ce")]:
        warnings.append(
            "T1ce is missing: the enhancing tumor and the tumor core cannot be told reliably without it (hafb: "
            "ET Dice 0.083 instead of 0.480, TC 0.322 instead of 0.546 on 17 cases); give the post-contrast T1 "
            "if there is one.")
    brain_ml = brain_volume_ml(case)
    if brain_ml > BRAIN_ML[1]:
        warnings.append(larger_than_a_brain(case, brain_ml))
    elif brain_ml < BRAIN_ML[0]:
        warnings.append(
            f"The non-zero part of the images is only {brain_ml:.0f} mL, less than a brain (BraTS: "
            f"{BRAIN_MEASURED}): part of the brain is missing or masked out and tumor there is missed; use images "
            "of the whole brain.")
    for role, (neighbours, skew) in intensity_figures(case).items():
        label = DISPLAY_NAMES[role]
        if neighbours < MIN_NEIGHBOUR_CORRELATION:
            warnings.append(
                f"{label}{NO_ANATOMY}(neighbouring voxels correlate {neighbours:.2f}; BraTS images 0.67 or "
                "more): it looks like noise, a mask or a misread file, so the result is meaningless; check the file.")
            continue
        low, high = SKEWNESS[role]
        if not low <= skew <= high:
            warnings.append(
                f"The {label} intensities are distributed unlike any {label} in BraTS (skewness {skew:.1f}, expected "
                f"{low:.1f} to {high:.1f}): it may be another sequence or processed differently, which lowers "
                f"accuracy; check that it is the {label} series.")
    return warnings


def brain_volume_ml(case: Case) -> float:
    """mL of the voxels non-zero in any input (the skull-stripped brain)."""
    return np.count_nonzero(np.any(case.image != 0, axis=0)) * case.voxel_volume_ml


def intensity_figures(case: Case) -> dict[str, tuple[float, float]]:
    """role -> (correlation of brain voxels with their neighbour along I, skewness of its brain voxels), on a sample
    of about SAMPLE voxels whose neighbour is brain too."""
    flat = case.image.reshape(len(MODALITIES), -1)
    brain = np.any(flat != 0, axis=0)
    pairs = np.flatnonzero(brain[:-1] & brain[1:])  # voxels whose neighbour along I is brain too
    sample = pairs[:: max(pairs.size // SAMPLE, 1)]
    figures = {}
    for channel, role in enumerate(MODALITIES):
        if case.present[channel]:
            values = flat[channel, sample]
            figures[role] = (correlation(values, flat[channel, sample + 1]), skewness(values[values != 0]))
    return figures


def larger_than_a_brain(case: Case, brain_ml: float) -> str:
    """The warning for images whose non-zero part is larger than a brain, with the advice that fits its cause.
    After the run's own skull stripping (Case.stages), every input was cut by one brain mask: the mask is too large,
    so the input is to be checked, not stripped again. Without it: where each input alone is no larger than a brain,
    together they do not lie on each other (misaligned: not a skull matter); an input larger than a brain on its
    own was not skull-stripped, which the run's own option does (with "auto" it would have run: inputs.has_skull
    uses the same bound), and the inputs may be misaligned as well (head overlap below registration.HEAD_ALIGNED)."""
    said = f"The non-zero part of the images is {brain_ml:.0f} mL, more than a brain (BraTS: {BRAIN_MEASURED})"
    if "skull_strip" in case.stages:
        return (f"{said} even after this run's skull stripping: the stripped images still look like a head with its "
                "skull (or a non-zero background), so the stripping did not find the brain; check the input (a head "
                "MRI, its T1 in the T1 role) and the result by eye.")
    strip = ("run with skull stripping (Skull stripping: auto in the module, --skull-strip auto on the command line) "
             "or give skull-stripped images")
    roles = case.present_modalities
    alone = {role: np.count_nonzero(case.image[MODALITIES.index(role)]) * case.voxel_volume_ml for role in roles}
    largest = max(alone, key=alone.get)
    apart = least_overlapping(case)
    if apart is None or apart[1] >= HEAD_ALIGNED:
        if alone[largest] > BRAIN_ML[1]:
            return (f"{said}: they are probably not skull-stripped or have a non-zero background, which the models "
                    f"were not trained on; {strip}.")
        return (f"{said}, though each input alone is no larger than a brain: they do not lie on each other (misaligned,"
                " or masked differently), and the segmentation may be wrong; check them by eye and register them "
                "(Register inputs: auto or on, --register auto|on) if they are misaligned.")
    role, overlap = apart
    label, reference = DISPLAY_NAMES[role], DISPLAY_NAMES[reference_of(case)]
    alignment = case.alignments.get(role)
    register = ("even after registration: check that every series is of this patient and in its role, or register "
                "them yourself" if alignment is not None and alignment.registered else
                "run with registration on (Register inputs: auto or on, --register auto|on) or register them yourself")
    said += (f" because the inputs do not lie on each other (the {label} head overlaps the {reference} head only "
             f"{overlap * 100:.0f} %, aligned BraTS inputs {HEAD_ALIGNED * 100:.0f} % or more)")
    if alone[largest] <= BRAIN_ML[1]:
        return f"{said}: they are probably misaligned, and the segmentation may be wrong; {register}."
    return (f"{said}, and {DISPLAY_NAMES[largest]} alone is {alone[largest]:.0f} mL: they are probably misaligned and "
            f"not skull-stripped, and the segmentation may be wrong; {register}, and {strip}.")


def least_overlapping(case: Case) -> Optional[tuple[str, float]]:
    """(role, head overlap with the reference input) of the input whose head lies least inside the reference's,
    on the case grid (registration.head_containment's measure: 1 when the smaller head lies inside the other); None
    with one input."""
    roles, reference = case.present_modalities, reference_of(case)
    heads = {role: head_mask(sitk.GetImageFromArray(case.image[MODALITIES.index(role)])) for role in roles}
    overlaps = {}
    for role in roles:
        if role != reference:
            smaller = min(int(heads[role].sum()), int(heads[reference].sum()))
            overlaps[role] = float((heads[role] & heads[reference]).sum()) / smaller if smaller else 0.0
    role = min(overlaps, key=overlaps.get, default=None)
    return None if role is None else (role, overlaps[role])


def reference_of(case: Case) -> str:
    """The role whose grid the case is on (the first present role for a Case made without preparation)."""
    return case.reference_role if case.reference_role in case.present_modalities else case.present_modalities[0]


def result_warnings(volumes_ml: dict[str, float]) -> list[str]:
    """No tumor, or a whole tumor outside the BraTS range."""
    whole = volumes_ml["WT"]
    if whole == 0:
        return ["No tumor was found: if there is one, check the inputs (each series in its role, skull-stripped, "
                "the whole brain covered)."]
    if whole < TUMOR_ML[0]:
        return [f"The whole tumor is only {whole:.1f} mL, smaller than the BraTS tumors ({TUMOR_MEASURED}): it may "
                "be a false detection, or the model may have missed most of a tumor; check it by eye (another model "
                "may see more)."]
    if whole > TUMOR_ML[1]:
        return [f"The whole tumor is {whole:.0f} mL, larger than the BraTS tumors ({TUMOR_MEASURED}): the inputs may "
                "be wrong (a series in the wrong role, no skull stripping); check them and the result by eye."]
    return []


def grading_refusal(volumes_ml: dict[str, float], warnings: Sequence[str] = ()) -> Optional[str]:
    """Why a case is not graded, or None. A grader answers whatever it is given: noise came out "HGG 1.0", and a
    segmenter may find a few mL of "tumor" in it. `warnings`: the case's (case_warnings)."""
    if any(NO_ANATOMY in warning for warning in warnings):
        return "Not graded: an input looks like noise, not anatomy (see its warning); give the real images."
    whole = volumes_ml["WT"]
    if whole == 0:
        return "Not graded: there is no tumor to grade."
    if whole < TUMOR_ML[0]:
        return (f"Not graded: {whole:.1f} mL of tumor is too little to grade (BraTS tumors: {TUMOR_MEASURED}); "
                "check the segmentation by eye.")
    return None

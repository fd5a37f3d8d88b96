"""Rigid co-registration of the other sequences onto the reference sequence (T1ce by default), with SimpleITK.

Euler3D (rotation + translation) on copies binned to about 2 mm: from the headers' placement and from the centres of
mass, a search over rotations and gradient descent on Mattes mutual information, plus one on the head outlines; the
head overlap and mutual information pick the candidate, which descends again at 2 mm to small steps, an input on
thicker slices being the fixed image then (_rigid, _refine). Measured before and after (head overlap: Dice of the
head masks; normalised mutual information over the reference's head): a registration that makes either worse is
undone, one that stays poor is a warning, and an input that covers less than half of the reference's head is an
error. Geometry stays in SimpleITK's LPS; `ras_transform_to_parent` gives
the matrix a Slicer transform node needs.
"""

import time
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import SimpleITK as sitk

from ..errors import Cancelled, InputError
from ..modalities import DISPLAY_NAMES
from ..progress import Progress

# Head overlap: Dice of the head (BraTS: brain) masks of an input and the reference on the reference grid, and its
# slab-tolerant variant, the overlap coefficient (head_containment). Measured on the 27 shared BraTS cases (T1, T2,
# FLAIR against T1ce; Testing/benchmarks/bench_registration.py): overlap coefficient 0.988 or more as BraTS aligned
# them, 0.958 or less after a seeded random rigid move (up to 15 degrees and 15 mm): `auto` registers an input below
# HEAD_ALIGNED (or on another grid), and with registration off one on another grid below it is warned about. Dice
# 0.985 or more aligned (but 0.79 for Brats18_2013_20_1's FLAIR, which covers less brain), 0.95 or less moved, 0.975
# or more registered back: a registration ending below HEAD_POOR is warned about. Normalised mutual information
# (1 unrelated, 2 identical) cannot tell: aligned 1.02-1.23, moved 1.00-1.08 on the same cases, and it preferred a
# 70 mm misfit on one; it only vetoes a registration that lowers it.
HEAD_ALIGNED = 0.97
HEAD_POOR = 0.95
_BINS = 32
_SIMILARITY_SPACING_MM = 2.0  # similarity on a 2 mm copy of the reference grid: 8x fewer voxels, same figure


@dataclass
class Alignment:
    """How one input was brought onto the reference grid.

    transform: ITK convention, a point of the reference (LPS, mm) -> the same anatomy in the input's space; the
    identity when the input was used as it lies. before / after: normalised mutual information over the
    reference's head; overlap_*: head overlap (see HEAD_ALIGNED)."""

    role: str
    transform: sitk.Transform
    before: float
    after: float
    seconds: float = 0.0
    registered: bool = False
    overlap_before: float = 0.0  # Dice of the two head masks on the reference grid (about 1 when aligned)
    overlap_after: float = 0.0

    def as_json(self) -> dict:
        return {"role": self.role, "registered": self.registered, "similarity_before": round(self.before, 4),
                "similarity_after": round(self.after, 4), "head_overlap_before": round(self.overlap_before, 4),
                "head_overlap_after": round(self.overlap_after, 4), "seconds": round(self.seconds, 2),
                "ras_transform_to_parent": ras_transform_to_parent(self.transform).round(6).tolist()}


def head_mask(reference: sitk.Image) -> np.ndarray:
    """Boolean (K, J, I) mask of the reference's head (or brain, if stripped): clearly above the background."""
    array = sitk.GetArrayViewFromImage(reference)
    high = np.percentile(array[array > 0], 99) if np.any(array > 0) else 0.0
    return array > 0.05 * high


def normalized_mutual_information(a: np.ndarray, b: np.ndarray, bins: int = _BINS) -> float:
    """(H(A) + H(B)) / H(A, B) of two samples (Studholme): 1 when unrelated, 2 when one fixes the other."""
    def binned(values):
        low, high = np.percentile(values, [0.5, 99.5])
        return np.clip(((values - low) / max(high - low, 1e-12) * bins).astype(int), 0, bins - 1)

    joint = np.bincount(binned(a) * bins + binned(b), minlength=bins * bins).astype(float)
    joint /= joint.sum()

    def entropy(p):
        p = p[p > 0]
        return float(-(p * np.log(p)).sum())

    grid = joint.reshape(bins, bins)
    joint_entropy = entropy(joint)
    return (entropy(grid.sum(1)) + entropy(grid.sum(0))) / joint_entropy if joint_entropy > 0 else 1.0


def as_float32(image: sitk.Image) -> sitk.Image:
    """The image as float32; itself when it is already (a Cast copies: 15-60 ms per 1 mm volume)."""
    return image if image.GetPixelID() == sitk.sitkFloat32 else sitk.Cast(image, sitk.sitkFloat32)


class _Similarity:
    """Similarity of inputs to one reference, on a coarse copy of its grid (built once per reference)."""

    def __init__(self, reference: sitk.Image):
        factors = [max(1, int(round(_SIMILARITY_SPACING_MM / s))) for s in reference.GetSpacing()]
        self.grid = sitk.BinShrink(as_float32(reference), factors)
        self.mask = head_mask(self.grid)
        self.values = sitk.GetArrayViewFromImage(self.grid)[self.mask]

    def __call__(self, moving: sitk.Image, transform: sitk.Transform) -> float:
        if self.values.size == 0:
            return 1.0
        resampled = sitk.Resample(moving, self.grid, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        return normalized_mutual_information(self.values, sitk.GetArrayViewFromImage(resampled)[self.mask])

    def head_dice(self, moving: sitk.Image, transform: sitk.Transform) -> float:
        """Dice of the two head (or brain) masks on the reference grid: about 1 when aligned, whatever the
        contrasts. (The overlap coefficient, which would forgive an input covering part of the head, was tried: a
        displaced FLAIR slab inside the brain scored 1 and was chosen 33 mm off.)"""
        resampled = sitk.Resample(moving, self.grid, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        other = head_mask(resampled)
        total = int(other.sum()) + int(self.mask.sum())
        return 2.0 * float((other & self.mask).sum()) / total if total else 0.0

    def head_containment(self, moving: sitk.Image, transform: sitk.Transform) -> float:
        """The overlap coefficient of the two head masks (overlap over the smaller mask): 1 when the smaller lies
        inside the other, so a FLAIR covering part of the brain (Brats18_2013_20_1: Dice 0.79) still scores about 1
        when aligned. Only to decide whether to register: a registration could slide a slab anywhere inside."""
        resampled = sitk.Resample(moving, self.grid, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        other = head_mask(resampled)
        smaller = min(int(other.sum()), int(self.mask.sum()))
        return float((other & self.mask).sum()) / smaller if smaller else 0.0

    def overlap(self, moving: sitk.Image, transform: sitk.Transform) -> float:
        """Share of the reference's head that the input's head covers."""
        resampled = sitk.Resample(moving, self.grid, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        covered = head_mask(resampled)[self.mask]
        return float(covered.mean()) if covered.size else 0.0


# Registration works on copies binned to about WORKING_MM (2 mm: the models' own spacing) and runs two steps: a
# search over rotations (every SEARCH_DEGREES up to SEARCH_STEPS steps either way about each axis, translation from
# the start) at 4 mm, then gradient descent at 4 and 2 mm. The search makes 15-degree head turns safe; descent
# alone stopped in local optima 10-20 mm off on some shared cases.
WORKING_MM = 2.0
SEARCH_DEGREES = 10.0
SEARCH_STEPS = 2
# Share of the reference head's voxels the metric samples at each level: all of them (at 4 and 2 mm that is cheap),
# as random samples made the descent wander off a good start on some cases.
SAMPLING = 1.0
ITERATIONS = 100
# The last descent at 2 mm goes on to steps of FINE_STEP (in mm of shift) instead of MIN_STEP: with noisy
# mutual information the step halves at each turn and reached MIN_STEP after about 13 iterations, 2-5 mm short of
# the optimum. And an input on thicker slices (FLAIR on 5 mm) is the fixed image there: the metric samples its own
# voxels and interpolates the reference at 1 mm, where interpolating between 5 mm slices blurred the input and
# pulled the optimum 1-6 mm off (registering aligned inputs from their true pose, 4 cases). Both measured with
# Testing/benchmarks/bench_registration.py; see docs/benchmarks.md. (A last step on full-resolution 5 or 10 %
# samples of the input was tried before: no better.)
MIN_STEP = 0.01
FINE_STEP = 0.001
FINE_ITERATIONS = 300


def _clipped(image: sitk.Image, spacing_mm: float = WORKING_MM) -> sitk.Image:
    """float32 copy binned to about `spacing_mm`, intensities clipped to the 0.5-99.5th percentile of its non-zero
    voxels: Mattes' histogram spans the whole range, and a few very bright voxels (BraTS 2021 T1ce: 15956, most
    under 1500) would crowd the tissue into a couple of bins."""
    factors = [max(1, int(round(spacing_mm / s))) for s in image.GetSpacing()]
    binned = sitk.BinShrink(as_float32(image), factors)
    array = sitk.GetArrayFromImage(binned)
    values = array[array != 0]
    if values.size:
        low, high = np.percentile(values, [0.5, 99.5])
        np.clip(array, min(low, 0.0), high, out=array)
    clipped = sitk.GetImageFromArray(array)
    clipped.CopyInformation(binned)
    return clipped


def _method(fixed: sitk.Image, seed: int, masks: bool = False) -> sitk.ImageRegistrationMethod:
    """Mattes mutual information on the images, or mean squares on their soft head masks (`masks`)."""
    method = sitk.ImageRegistrationMethod()
    if masks:
        method.SetMetricAsMeanSquares()
    else:
        method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=_BINS)
    method.SetMetricSamplingStrategy(method.RANDOM if SAMPLING < 1.0 else method.NONE)
    if SAMPLING < 1.0:
        method.SetMetricSamplingPercentage(SAMPLING, seed)
    method.SetMetricFixedMask(_mask_image(fixed))  # samples on the head, not the empty background
    method.SetInterpolator(sitk.sitkLinear)
    return method


def _run(method: sitk.ImageRegistrationMethod, fixed: sitk.Image, moving: sitk.Image,
         should_cancel: Optional[Callable[[], bool]]) -> sitk.Euler3DTransform:
    cancelled = []

    def on_iteration():
        if should_cancel and should_cancel() and not cancelled:
            cancelled.append(True)
            method.Abort()

    method.AddCommand(sitk.sitkIterationEvent, on_iteration)
    transform = method.Execute(fixed, moving)
    if cancelled:
        raise Cancelled("Cancelled by the user during registration; nothing was written.")
    if isinstance(transform, sitk.CompositeTransform):
        transform = transform.GetNthTransform(0)
    return sitk.Euler3DTransform(transform)


def _search(fixed: sitk.Image, moving: sitk.Image, start: sitk.Transform,
            should_cancel: Optional[Callable[[], bool]], seed: int, masks: bool = False) -> sitk.Euler3DTransform:
    """The best of a grid of rotations about `start`'s centre, translation kept, at 4 mm."""
    search = _method(fixed, seed, masks)
    search.SetOptimizerAsExhaustive([SEARCH_STEPS] * 3 + [0] * 3, stepLength=np.deg2rad(SEARCH_DEGREES))
    search.SetOptimizerScales([1.0] * 6)
    search.SetShrinkFactorsPerLevel([2])
    search.SetSmoothingSigmasPerLevel([2.0])
    search.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    search.SetInitialTransform(sitk.Euler3DTransform(start), inPlace=False)
    return _run(search, fixed, moving, should_cancel)


def _descend(fixed: sitk.Image, moving: sitk.Image, start: sitk.Transform, shrink: int,
             should_cancel: Optional[Callable[[], bool]], seed: int, masks: bool = False, fine: bool = False,
             ) -> sitk.Euler3DTransform:
    """Gradient descent on all six parameters at one level (shrink 2: 4 mm, 1: 2 mm); `fine`: to FINE_STEP."""
    refine = _method(fixed, seed, masks)
    refine.SetOptimizerAsRegularStepGradientDescent(
        learningRate=2.0, minStep=FINE_STEP if fine else MIN_STEP,
        numberOfIterations=FINE_ITERATIONS if fine else ITERATIONS, relaxationFactor=0.5,
        gradientMagnitudeTolerance=1e-6)
    refine.SetOptimizerScalesFromPhysicalShift()
    refine.SetShrinkFactorsPerLevel([shrink])
    refine.SetSmoothingSigmasPerLevel([2.0 if shrink > 1 else 0.0])
    refine.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    refine.SetInitialTransform(start, inPlace=False)
    return _run(refine, fixed, moving, should_cancel)


def _refine(fixed: sitk.Image, moving: sitk.Image, fine_fixed: sitk.Image, start: sitk.Euler3DTransform,
            should_cancel: Optional[Callable[[], bool]], seed: int) -> sitk.Euler3DTransform:
    """The last descent at 2 mm, to FINE_STEP. An input on thicker slices than the reference is the fixed image,
    with the reference at 1 mm (`fine_fixed`) moving, and the transform found is inverted."""
    if max(moving.GetSpacing()) > max(fixed.GetSpacing()):
        inverse = _descend(moving, fine_fixed, start.GetInverse(), 1, should_cancel, seed, fine=True)
        return sitk.Euler3DTransform(inverse.GetInverse())
    return _descend(fixed, moving, start, 1, should_cancel, seed, fine=True)


def _soft_mask(image: sitk.Image) -> sitk.Image:
    """The head mask as a smooth float image: its outline is the same in every sequence."""
    return sitk.SmoothingRecursiveGaussian(as_float32(_mask_image(image)), 2.0)


def _rigid(fixed: sitk.Image, moving: sitk.Image, fine_fixed: sitk.Image, starts: list[sitk.Transform],
           similarity: "_Similarity", progress: Progress, should_cancel: Optional[Callable[[], bool]], seed: int,
           ) -> sitk.Euler3DTransform:
    """Candidates at 4 mm: from each start (as the headers place the input; centres of mass matched) a rotation
    search and descent on mutual information, and one on the head outlines (mean squares of soft masks; mutual
    information alone preferred alignments 70 mm off on a case whose T2 shares little with its T1ce). Among those
    whose head overlap (Dice of the head masks) is within 0.02 of the best, mutual information picks one, which
    descends again at 2 mm (_refine); that last step is kept only if it keeps the head overlap."""
    fixed_outline, moving_outline = _soft_mask(fixed), _soft_mask(moving)
    runs = [(start, False) for start in starts] + [(starts[-1], True)]
    candidates = []
    for index, (start, masks) in enumerate(runs):
        progress(0.8 * index / len(runs), "searching rotations")
        pair = (fixed_outline, moving_outline) if masks else (fixed, moving)
        searched = _search(*pair, start, should_cancel, seed, masks)
        candidates.append(_descend(*pair, searched, 2, should_cancel, seed, masks))
    overlaps = [similarity.head_dice(moving, candidate) for candidate in candidates]
    best = max((candidate for candidate, overlap in zip(candidates, overlaps) if overlap >= max(overlaps) - 0.02),
               key=lambda candidate: similarity(moving, candidate))
    progress(0.8, "refining")
    final = _refine(fixed, moving, fine_fixed, best, should_cancel, seed)
    return final if similarity.head_dice(moving, final) >= similarity.head_dice(moving, best) - 0.02 else best


def _mask_image(fixed: sitk.Image) -> sitk.Image:
    mask = sitk.GetImageFromArray(head_mask(fixed).astype(np.uint8))
    mask.CopyInformation(fixed)
    return mask


def ras_transform_to_parent(transform: sitk.Transform) -> np.ndarray:
    """4x4 RAS matrix that moves the input onto the reference: what a Slicer linear transform node placed above the
    input volume needs as its transform *to* parent. ITK's transform maps reference points to input points (the
    resampling direction, Slicer's "from parent"), so this is its inverse, taken from LPS to RAS."""
    from_parent = np.eye(4)
    if hasattr(transform, "GetMatrix"):  # every rigid/affine transform; an identity sitk.Transform has none
        matrix = np.array(transform.GetMatrix(), dtype=float).reshape(3, 3)
        centre = np.array(transform.GetCenter(), dtype=float)
        from_parent[:3, :3] = matrix
        from_parent[:3, 3] = np.array(transform.GetTranslation(), dtype=float) + centre - matrix @ centre
    lps_to_ras = np.diag([-1.0, -1.0, 1.0, 1.0])
    return lps_to_ras @ np.linalg.inv(from_parent) @ lps_to_ras


def align(reference: sitk.Image, moving: sitk.Image, role: str, reference_role: str,
          progress: Optional[Progress] = None, should_cancel: Optional[Callable[[], bool]] = None,
          register: bool = True, similarity: Optional[_Similarity] = None, seed: int = 0
          ) -> tuple[Alignment, list[str]]:
    """Register `moving` (the input of `role`) rigidly onto `reference`; (Alignment, warnings).

    With register=False the alignment as the headers give it is only measured. A registration that lowers the
    head overlap or the similarity is undone (the input is used as it lies) with a warning; a head overlap below
    HEAD_POOR is a warning; an input that covers less than half of the reference's head raises InputError."""
    report = progress or (lambda fraction, message: None)
    started = time.perf_counter()
    similarity = similarity or _Similarity(reference)
    label, reference_label = DISPLAY_NAMES[role], DISPLAY_NAMES[reference_role]
    fixed, moving_f = _clipped(reference), _clipped(moving)
    identity = sitk.Euler3DTransform()
    identity.SetCenter(fixed.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in fixed.GetSize()]))
    before, overlap_before = similarity(moving_f, identity), similarity.head_dice(moving_f, identity)
    alignment = Alignment(role, identity, before, before, overlap_before=overlap_before, overlap_after=overlap_before)
    warnings = []
    if register:
        report(0.0, f"Registering {label} to {reference_label}")
        centred = sitk.CenteredTransformInitializer(fixed, moving_f, sitk.Euler3DTransform(),
                                                    sitk.CenteredTransformInitializerFilter.MOMENTS)
        transform = _rigid(fixed, moving_f, _clipped(reference, 1.0), [identity, centred], similarity,
                           lambda fraction, message: report(
                               0.95 * fraction, f"Registering {label} to {reference_label}: {message}"),
                           should_cancel, seed)
        after, overlap_after = similarity(moving_f, transform), similarity.head_dice(moving_f, transform)
        if overlap_after >= overlap_before - 0.01 and after >= before - 0.005:  # tolerances: sampling noise
            alignment = Alignment(role, transform, before, after, registered=True, overlap_before=overlap_before,
                                  overlap_after=overlap_after)
        else:
            warnings.append(
                f"Registering {label} to {reference_label} made their alignment worse (head overlap "
                f"{overlap_before:.2f} -> {overlap_after:.2f}, similarity {before:.3f} -> {after:.3f}), so {label} was "
                "used as it lies; check its alignment by eye, or register it yourself (e.g. General Registration "
                "(BRAINS)) and run with registration off.")
    if similarity.overlap(moving_f, alignment.transform) < 0.5:
        raise InputError(
            f"{label} covers less than half of the {reference_label} head"
            f"{' even after registration' if register else ''} (head overlap {alignment.overlap_after:.2f}; aligned "
            "BraTS sequences 0.99 or more). Check that both belong to the same patient and session and cover the "
            "head, or register them yourself first.")
    if alignment.overlap_after < HEAD_POOR:
        warnings.append(
            f"{label} is probably misaligned with {reference_label} (head overlap {alignment.overlap_after:.2f}; "
            "aligned BraTS sequences 0.99 or more)"
            f"{' even after registration' if register else ''}: the segmentation may be wrong; "
            f"{'check the volumes by eye' if register else 'run with registration on'}.")
    alignment.seconds = time.perf_counter() - started
    report(1.0, f"{label} {'registered' if alignment.registered else 'checked'}")
    return alignment, warnings


def resample_registered(moving: sitk.Image, reference: sitk.Image, transform: sitk.Transform,
                        interpolator: int = sitk.sitkLinear) -> np.ndarray:
    """(K, J, I) float32 array of `moving` on the reference grid through `transform`; 0 outside the input."""
    resampled = sitk.Resample(moving, reference, transform, interpolator, 0.0, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(resampled)


def labels_on_input_grid(labels: sitk.Image, input_grid: sitk.Image, transform: sitk.Transform) -> sitk.Image:
    """A label map on the reference grid taken back onto an input's own grid (nearest neighbour): the inverse of
    the registration, so the labels lie on that input's anatomy."""
    return sitk.Resample(labels, input_grid, transform.GetInverse(), sitk.sitkNearestNeighbor, 0,
                         labels.GetPixelID())

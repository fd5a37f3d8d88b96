"""Input preparation: bring every input onto the reference input's grid (rigid registration when asked or needed,
else resampling in physical space), then strip the skull when asked or needed. Each stage reports progress,
honours cancel and is timed.

register: "off" resamples in physical space (as the headers place the volumes) and only warns when an input on
another grid looks misaligned; "on" registers every other input; "auto" registers an input that lies on another
grid, or whose head lies less inside the reference's than in aligned BraTS cases (registration.HEAD_ALIGNED).
skull_strip: "off", "on", or "auto" (only when an input is not skull-stripped already); skull_stripping.py.
"""

import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import SimpleITK as sitk

from ..case import Case
from ..choices import DEFAULT_REFERENCE, REGISTER_MODES, SKULL_STRIP_MODES
from ..errors import Cancelled, InputError
from ..modalities import DISPLAY_NAMES, MODALITIES, how_to_give
from ..progress import Progress
from .geometry import check_distinct, check_volume, image_from_array, same_grid, spacing_of
from .orientation import check_orientation
from .plausibility import MIN_NEIGHBOUR_CORRELATION, SAMPLE, case_warnings, correlation, grid_warnings
from .registration import HEAD_ALIGNED, HEAD_POOR, Alignment, _Similarity, align, head_mask, resample_registered

Volume = tuple[np.ndarray, np.ndarray]  # (array (K, J, I), IJK-to-RAS)


@dataclass
class PreparedInputs:
    volumes: dict[str, np.ndarray]  # role -> float32 array on the reference grid
    reference_role: str
    alignments: dict[str, Alignment] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    stages: dict[str, float] = field(default_factory=dict)


def reference_role_of(present_roles: list[str], reference: str = DEFAULT_REFERENCE) -> str:
    """The asked reference role when it is present, else the first present role in MODALITIES order."""
    if reference not in MODALITIES:
        raise InputError(f"Unknown reference '{reference}': choose one of {', '.join(MODALITIES)}.")
    return reference if reference in present_roles else present_roles[0]


def check_modes(register: str, skull_strip: str) -> None:
    if register not in REGISTER_MODES:
        raise InputError(f"Unknown registration setting '{register}': choose one of {', '.join(REGISTER_MODES)}.")
    if skull_strip not in SKULL_STRIP_MODES:
        raise InputError(f"Unknown skull stripping setting '{skull_strip}': choose one of "
                         f"{', '.join(SKULL_STRIP_MODES)}.")


def shows_anatomy(array: np.ndarray) -> bool:
    """Neighbouring non-zero voxels correlate as in an image (plausibility's threshold); noise does not, and its
    similarity to anything is meaningless, so it is neither judged nor registered (plausibility warns about it)."""
    flat = array.reshape(-1)
    nonzero = np.flatnonzero(flat[:-1] != 0)
    sample = nonzero[:: max(nonzero.size // SAMPLE, 1)]
    return sample.size > 1 and correlation(flat[sample], flat[sample + 1]) >= MIN_NEIGHBOUR_CORRELATION


def _check_cancel(should_cancel: Optional[Callable[[], bool]]) -> None:
    if should_cancel and should_cancel():
        raise Cancelled("Cancelled by the user; nothing was written.")


def prepare_volumes(volumes: dict[str, Volume], register: str = "off", reference: str = DEFAULT_REFERENCE,
                    skull_strip: str = "off", progress: Optional[Progress] = None,
                    should_cancel: Optional[Callable[[], bool]] = None) -> PreparedInputs:
    """Every present volume (role -> (array, IJK-to-RAS), checked by geometry.check_volume) on the reference
    role's grid, registered and skull-stripped as the modes say."""

    check_modes(register, skull_strip)
    report = progress or (lambda fraction, message: None)
    register_end = 0.6 if skull_strip != "off" else 1.0  # share of the progress bar before skull stripping
    roles = [role for role in MODALITIES if role in volumes]
    reference_role = reference_role_of(roles, reference)
    reference_array, reference_matrix = volumes[reference_role]
    reference_image = image_from_array(reference_array.astype(np.float32, copy=False), reference_matrix)
    prepared = PreparedInputs({reference_role: reference_array.astype(np.float32, copy=False)}, reference_role)
    reference_anatomy = shows_anatomy(reference_array)
    similarity = _Similarity(reference_image) if register != "off" or reference_anatomy else None
    others = [role for role in roles if role != reference_role]
    started = time.perf_counter()
    for index, role in enumerate(others):
        _check_cancel(should_cancel)
        array, matrix = volumes[role]

        def part(fraction, message, index=index):  # this input's share of the registration's progress
            report(register_end * (index + fraction) / len(others), message)

        on_grid = same_grid(array.shape, matrix, reference_array.shape, reference_matrix)
        moving = image_from_array(array.astype(np.float32, copy=False), matrix)
        judged = reference_anatomy and shows_anatomy(array)
        registering = register == "on" or (register == "auto" and judged and (
            not on_grid or _misaligned(moving, similarity)))
        if registering:
            alignment, warnings = align(reference_image, moving, role, reference_role, part, should_cancel,
                                        similarity=similarity)
            prepared.alignments[role] = alignment
            prepared.warnings += warnings
            prepared.volumes[role] = resample_registered(moving, reference_image, alignment.transform)
        else:
            if not on_grid:
                prepared.warnings.append(
                    f"{DISPLAY_NAMES[role]} lies on a different voxel grid than {DISPLAY_NAMES[reference_role]}; it "
                    "was resampled onto that grid (linear interpolation).")
            if judged:  # on the grid or not: a moved series, or another patient's, says so instead of a silent misfit
                prepared.warnings += _outline_warning(role, reference_role, moving, similarity, register)
            prepared.volumes[role] = (array.astype(np.float32, copy=False) if on_grid else
                                      resample_registered(moving, reference_image, sitk.Transform()))
        if not np.any(prepared.volumes[role]):
            raise InputError(
                f"{DISPLAY_NAMES[role]} does not overlap {DISPLAY_NAMES[reference_role]} in physical space. Register "
                "the volumes first (e.g. the General Registration (BRAINS) module), or run with registration on.")
    if prepared.alignments:
        prepared.stages["register"] = round(time.perf_counter() - started, 2)
    _check_cancel(should_cancel)
    _strip_skull(prepared, reference_image, skull_strip,
                 lambda fraction, message: report(register_end + (1 - register_end) * fraction, message), should_cancel)
    if prepared.stages:  # nothing to say, and no progress to show, when nothing was registered or stripped
        report(1.0, "Inputs prepared")
    return prepared


def _misaligned(moving: sitk.Image, similarity: _Similarity) -> bool:
    """As the headers place it, the input's head lies less inside the reference's (or the reference's inside the
    input's) than in any aligned BraTS case (registration.HEAD_ALIGNED)."""
    return similarity.head_containment(moving, sitk.Euler3DTransform()) < HEAD_ALIGNED


def _outline_warning(role: str, reference_role: str, moving: sitk.Image, similarity: _Similarity,
                     register: str) -> list[str]:
    """A warning when an input used as it lies does not fill the reference's head outline (head Dice below
    registration.HEAD_POOR). Measured on the shared cases (docs/benchmarks.md, *Registration*): T1, T2 and FLAIR
    as BraTS aligned them 0.985 or more, but for one FLAIR that covers part of the brain (0.79); moved by up to
    15 degrees and 15 mm 0.70-0.88; another patient's T2 on the same grid 0.83-0.93, often inside the head
    (overlap coefficient up to 0.997), where `auto` would not register it. An input whose field of view only cuts
    the head short is not warned about (_cut_field_of_view)."""
    dice = similarity.head_dice(moving, sitk.Euler3DTransform())
    if dice >= HEAD_POOR or _cut_field_of_view(moving, similarity):
        return []
    label, reference_label = DISPLAY_NAMES[role], DISPLAY_NAMES[reference_role]
    advice = ("run with registration (Register inputs: auto or on, --register auto|on) or register it yourself"
              if register == "off" else "check it by eye, or run with registration on (--register on)")
    return [f"{label}'s head outline does not match {reference_label}'s (head overlap {dice:.2f}; aligned BraTS "
            f"sequences 0.985 or more): it may be misaligned, another patient's or session's series, or cover only "
            f"part of the head; the segmentation may be wrong. If it is the same session, {advice}."]


def _cut_field_of_view(moving: sitk.Image, similarity: _Similarity) -> bool:
    """The input's head lies inside the reference's (overlap coefficient 0.999 or more) and matches its extent
    along two axes (within 5 %) but ends at least 15 % short along the third: the same head in a smaller field of
    view, as Brats18_2013_20_1's FLAIR (0.9997; 22 % short from front to back, the other two within 1 %). Another
    patient's head inside this one reached 0.997 on the shared cases."""
    resampled = sitk.Resample(moving, similarity.grid, sitk.Euler3DTransform(), sitk.sitkLinear, 0.0,
                              sitk.sitkFloat32)
    other, mask = head_mask(resampled), similarity.mask
    if not other.any() or (other & mask).sum() < 0.999 * other.sum():
        return False
    shortfall = []
    for axis in range(3):
        rest = tuple(a for a in range(3) if a != axis)
        extent = [np.ptp(np.flatnonzero(m.any(axis=rest))) + 1 for m in (other, mask)]
        shortfall.append(1.0 - extent[0] / extent[1])
    shortfall.sort()
    return shortfall[2] >= 0.15 and abs(shortfall[0]) <= 0.05 and abs(shortfall[1]) <= 0.05


def has_skull(array: np.ndarray, spacing) -> bool:
    """Not skull-stripped (skull_stripping.is_skull_stripped) and more non-zero voxels than a brain fills: an
    image smaller than that (a slab, a synthetic test volume) has no skull to strip, and plausibility says it is
    small."""
    from . import skull_stripping

    nonzero_ml = np.count_nonzero(array) * float(np.prod(spacing)) / 1000.0
    return nonzero_ml > skull_stripping.MAX_BRAIN_ML and not skull_stripping.is_skull_stripped(array, spacing)


def _strip_skull(prepared: PreparedInputs, reference_image: sitk.Image, mode: str, report: Progress,
                 should_cancel: Optional[Callable[[], bool]]) -> None:
    """Zero every volume outside the brain mask of the reference, when asked or (auto) when any input still has
    its skull."""
    if mode == "off":
        return
    from . import skull_stripping

    spacing = reference_image.GetSpacing()
    if mode == "auto" and not any(has_skull(array, spacing) for array in prepared.volumes.values()):
        return
    started = time.perf_counter()
    report(0.0, "Skull stripping")
    # deepbet was trained on T1-weighted heads: T1 when there is one (now on the reference grid), else the reference
    image = sitk.GetImageFromArray(prepared.volumes.get("t1", prepared.volumes[prepared.reference_role]))
    image.CopyInformation(reference_image)
    mask = sitk.GetArrayViewFromImage(skull_stripping.brain_mask(image, report, should_cancel)) > 0
    for role, array in prepared.volumes.items():
        prepared.volumes[role] = np.where(mask, array, np.float32(0.0)).astype(np.float32)
    prepared.stages["skull_strip"] = round(time.perf_counter() - started, 2)


def labels_on_input_grids(labels: np.ndarray, case) -> dict[str, sitk.Image]:
    """The label map (on the case's reference grid) on each other input's own grid, role -> uint8 image: through the
    inverse of its registration (as the headers place it when it was not registered), nearest neighbour."""
    from .registration import labels_on_input_grid

    on_reference = image_from_array(np.asarray(labels, dtype=np.uint8), case.ijk_to_ras)
    out = {}
    for role, (shape, matrix) in case.input_grids.items():
        if role == case.reference_role:
            continue
        alignment = case.alignments.get(role)
        transform = alignment.transform if alignment is not None else sitk.Euler3DTransform()
        out[role] = labels_on_input_grid(on_reference, image_from_array(np.zeros(shape, np.uint8), matrix), transform)
    return out


def assemble_case(volumes: dict[str, Optional[tuple[np.ndarray, np.ndarray]]], name: str, register: str = "off",
                  reference: str = DEFAULT_REFERENCE, skull_strip: str = "off", progress=None,
                  should_cancel=None) -> Case:
    """Build a validated Case from role -> (array (K, J, I), ijk_to_ras) or None.

    The grid is that of the `reference` role (T1ce by default; the first present modality in MODALITIES order when
    it is absent). The other volumes are registered onto it or resampled in physical space as `register` says
    (auto / on / off), and skull-stripped as `skull_strip` says (preparation.py), with progress(fraction, message)
    and should_cancel(). Case.warnings holds what preparation found (a different grid, a misaligned or poorly
    registered input) and the plausibility warnings (thick slices, small field of view, missing FLAIR, brain volume,
    intensities).
    """
    present_roles = [role for role in MODALITIES if volumes.get(role) is not None]
    if not present_roles:
        raise InputError(f"No input volume is given: {how_to_give(MODALITIES)} (at least those the chosen model "
                         "needs).")
    for role in present_roles:
        check_volume(role, volumes[role][0])
    reference_array, reference_matrix = volumes[reference_role_of(present_roles, reference)]
    # Each input becomes float32 once, straight into its channel when it has the reference's shape: on-grid inputs
    # then need no further copy (each fresh full-size array costs page faults: 0.1-0.3 s per 4 channels here).
    image = np.zeros((len(MODALITIES),) + tuple(reference_array.shape), dtype=np.float32)
    as_float = {}
    for role in present_roles:
        array, matrix = volumes[role]
        if array.shape == reference_array.shape:
            channel = image[MODALITIES.index(role)]
            channel[...] = array
            as_float[role] = (channel, matrix)
        else:
            as_float[role] = (array.astype(np.float32, copy=False), matrix)
    prepared = prepare_volumes(as_float, register, reference, skull_strip, progress, should_cancel)
    warnings = grid_warnings({role: (volumes[role][0].shape, spacing_of(volumes[role][1])) for role in present_roles})
    warnings += prepared.warnings
    for channel, role in enumerate(MODALITIES):
        if role in present_roles and not np.shares_memory(prepared.volumes[role], image[channel]):
            image[channel] = prepared.volumes[role]
    check_distinct(image, present_roles)
    present = tuple(role in present_roles for role in MODALITIES)
    # after registration, which cannot undo a flip; among the inputs that show anatomy (noise has no left or right)
    check_orientation(image, tuple(here and shows_anatomy(channel) for here, channel in zip(present, image)),
                      reference_matrix)
    case = Case(name=name, image=image, ijk_to_ras=np.array(reference_matrix, dtype=float), present=present,
                warnings=warnings, reference_role=prepared.reference_role, alignments=prepared.alignments,
                input_grids={role: (volumes[role][0].shape, np.array(volumes[role][1], dtype=float))
                             for role in present_roles}, stages=prepared.stages)
    case.warnings += case_warnings(case)
    return case

"""Left-right mirrored inputs: an image whose voxels were flipped but whose header was kept (what a wrong
DICOM-to-NIfTI conversion does) lies on the grid like the others, and a rigid registration cannot flip it back.

Each input is compared with the other sequences by normalised mutual information, as it is and mirrored about the
brain's mid-plane: a brain is nearly symmetric, its tumor and the rest of its anatomy are not, so the right way round
fits the other sequences better. Measured on the 27 shared BraTS cases (2 mm, all four roles,
Testing/unit/test_orientation.py): the mirror image fits the other sequences at most 0.863 times as well as the
image itself; a mirrored copy's mirror (the original) at least 1.249 times as well. An input whose mirror fits
MIRROR_RATIO times better is refused. It costs about 0.2 s per case.
"""

import numpy as np

from ..errors import InputError
from ..modalities import DISPLAY_NAMES, MODALITIES
from .geometry import nearest_array_axis
from .registration import normalized_mutual_information

MIRROR_RATIO = 1.1
_WORKING_MM = 2.0  # the fit is judged on about 2 mm voxels: 8x fewer, the same answer


def _mirrored(volume: np.ndarray, axis: int, first: int, last: int) -> np.ndarray:
    """`volume` mirrored along `axis` about the plane half-way between indices first and last (0 outside)."""
    index = np.arange(volume.shape[axis])
    source = first + last - index
    inside = (source >= 0) & (source < volume.shape[axis])
    out = np.zeros_like(volume)
    target = [slice(None)] * volume.ndim
    origin = [slice(None)] * volume.ndim
    target[axis], origin[axis] = index[inside], source[inside]
    out[tuple(target)] = volume[tuple(origin)]
    return out


def _fit(volume: np.ndarray, others: list[np.ndarray]) -> float:
    """How much the other sequences tell about `volume`: the sum of their normalised mutual information above 1."""
    total = 0.0
    for other in others:
        where = (volume != 0) | (other != 0)
        total += normalized_mutual_information(other[where], volume[where]) - 1.0
    return total


def mirror_ratios(image: np.ndarray, present: tuple[bool, ...], ijk_to_ras: np.ndarray) -> dict[str, float]:
    """role -> how much better its left-right mirror image fits the other present sequences than it does (below 1:
    the image itself fits better). `image`: (4, K, J, I) on one grid, MODALITIES order."""
    roles = [role for role, here in zip(MODALITIES, present) if here]
    if len(roles) < 2:
        return {}
    spacing = np.linalg.norm(np.asarray(ijk_to_ras, dtype=float)[:3, :3], axis=0)[::-1]  # (K, J, I)
    step = tuple(slice(None, None, max(int(round(_WORKING_MM / s)), 1)) for s in spacing)
    volumes = {role: image[MODALITIES.index(role)][step] for role in roles}
    axis = nearest_array_axis(ijk_to_ras, 0)  # left-right
    brain = np.any([volume != 0 for volume in volumes.values()], axis=0)
    occupied = np.flatnonzero(brain.any(axis=tuple(a for a in range(3) if a != axis)))
    if occupied.size == 0:
        return {}
    ratios = {}
    for role in roles:
        others = [volumes[other] for other in roles if other != role]
        as_it_is = _fit(volumes[role], others)
        if as_it_is > 0:
            mirrored = _mirrored(volumes[role], axis, int(occupied[0]), int(occupied[-1]))
            ratios[role] = _fit(mirrored, others) / as_it_is
    return ratios


def check_orientation(image: np.ndarray, present: tuple[bool, ...], ijk_to_ras: np.ndarray) -> None:
    """InputError naming an input that looks mirrored left-right against the others (with two inputs, both).
    `present`: the inputs to judge, one bool per modality (those that show anatomy)."""
    ratios = mirror_ratios(image, present, ijk_to_ras)
    if not ratios or max(ratios.values()) < MIRROR_RATIO:
        return
    role = max(ratios, key=ratios.get)
    if len(ratios) == 2:
        first, second = (DISPLAY_NAMES[name] for name in ratios)
        raise InputError(
            f"{first} and {second} are mirror images of each other left-right (mirrored, one fits the other "
            f"{ratios[role]:.2f} times better): one of them is flipped. Check their orientation (e.g. their "
            "DICOM-to-NIfTI conversion) and give it the right way round.")
    raise InputError(
        f"{DISPLAY_NAMES[role]} looks mirrored left-right: mirrored back it fits the other sequences "
        f"{ratios[role]:.2f} times better (a correctly oriented input fits at most 0.86 times as well mirrored). "
        f"Check its orientation (e.g. its DICOM-to-NIfTI conversion) and give it the right way round.")

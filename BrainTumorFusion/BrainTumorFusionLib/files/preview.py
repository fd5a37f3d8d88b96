"""Quick-look picture of a case (`--preview`): axial, coronal and sagittal slices through the tumor centre (the
brain's centre when no tumor was found), FLAIR and T1ce with the labels over them, so a batch user can check many
cases by eye. Slices are shown in the usual radiological way (the patient's right on the left, anterior and
superior up), by SimpleITK's reorientation of the grid, and at their physical aspect ratio."""

from pathlib import Path
from typing import Optional

import numpy as np
import SimpleITK as sitk
from PIL import Image, ImageDraw

from ..case import Case
from ..engine.preprocessing import brain_bounding_box, crop_matrix
from ..modalities import DISPLAY_NAMES, MODALITIES
from ..preparation.geometry import image_from_array
from .file_io import PathLike, write_atomically
from .segments import SEGMENTS

PANEL_PX = 240  # longest side of each slice picture
ROLES = ("flair", "t1ce")
_ALPHA = 0.45
_TEXT = 14  # height of the caption row


def write_preview(case: Case, labels: np.ndarray, path: PathLike) -> None:
    """PNG of the FLAIR and T1ce rows (axial, coronal, sagittal) with the labels over them, written atomically."""
    picture = render(case, labels)
    write_atomically(lambda target: picture.save(target, format="PNG"), path, _png_problem)


def render(case: Case, labels: np.ndarray) -> Image.Image:
    crop = brain_bounding_box(case.image)  # the brain fills the picture, not the empty field of view around it
    matrix = crop_matrix(case.ijk_to_ras, crop)
    oriented_labels, spacing = _lps(labels[crop], matrix)
    centre = _centre(oriented_labels)
    rows = []
    for role in ROLES:
        index = MODALITIES.index(role)
        grey = _window(_lps(case.image[index][crop], matrix)[0]) if case.present[index] else None
        panels = [_panel(grey, oriented_labels, centre, axis, spacing) for axis in range(3)]
        rows.append(_row(panels, DISPLAY_NAMES[role] + ("" if grey is not None else " (not given)")))
    width = max(row.width for row in rows)
    picture = Image.new("RGB", (width, sum(row.height for row in rows) + _TEXT), "black")
    ImageDraw.Draw(picture).text((4, 1), case.name[:120], fill="white")
    top = _TEXT
    for row in rows:
        picture.paste(row, (0, top))
        top += row.height
    return picture


def _lps(array: np.ndarray, ijk_to_ras: np.ndarray) -> tuple[np.ndarray, tuple[float, float, float]]:
    """The (K, J, I) array reoriented by SimpleITK so that I runs to the patient's left, J to posterior and K to
    superior (axes permuted and flipped, no interpolation), and its spacing along the new I, J, K."""
    oriented = sitk.DICOMOrient(image_from_array(array, ijk_to_ras), "LPS")
    return sitk.GetArrayFromImage(oriented), oriented.GetSpacing()


def _centre(labels: np.ndarray) -> tuple[int, int, int]:
    tumor = np.argwhere(labels > 0)
    if len(tumor) == 0:
        return tuple(n // 2 for n in labels.shape)
    return tuple(int(v) for v in np.round(tumor.mean(axis=0)))


def _panel(grey: Optional[np.ndarray], labels: np.ndarray, centre: tuple[int, int, int], axis: int,
           spacing: tuple[float, float, float]) -> Image.Image:
    """One slice (axis 0 axial, 1 coronal, 2 sagittal) as RGB, superior up, at its physical aspect ratio."""
    index = [slice(None)] * 3
    index[axis] = centre[axis]
    label_slice = labels[tuple(index)]
    grey = np.zeros(label_slice.shape, np.float32) if grey is None else grey[tuple(index)]
    if axis > 0:  # rows run along K (inferior to superior): superior goes up
        grey, label_slice = grey[::-1], label_slice[::-1]
    rgb = np.repeat(grey[..., None], 3, axis=2)
    for spec in SEGMENTS:
        mask = label_slice == spec.label
        rgb[mask] = (1 - _ALPHA) * rgb[mask] + _ALPHA * np.array(spec.color)
    # Millimetres per pixel of the rows and columns: (J, I) axial, (K, I) coronal, (K, J) sagittal.
    row_mm, column_mm = {0: (spacing[1], spacing[0]), 1: (spacing[2], spacing[0]), 2: (spacing[2], spacing[1])}[axis]
    height_mm, width_mm = rgb.shape[0] * row_mm, rgb.shape[1] * column_mm
    scale = PANEL_PX / max(height_mm, width_mm)
    size = (max(int(round(width_mm * scale)), 1), max(int(round(height_mm * scale)), 1))
    return Image.fromarray((rgb * 255).astype(np.uint8)).resize(size, Image.Resampling.NEAREST)


def _window(volume: np.ndarray) -> np.ndarray:
    """Intensities scaled to 0..1 between the 0.5th and 99.5th percentiles of the non-zero voxels."""
    values = volume[volume != 0]
    if values.size == 0:
        return np.zeros(volume.shape, np.float32)
    low, high = np.percentile(values, (0.5, 99.5))
    return np.clip((volume - low) / max(high - low, 1e-6), 0, 1).astype(np.float32)


def _row(panels: list[Image.Image], caption: str) -> Image.Image:
    row = Image.new("RGB", (sum(p.width for p in panels) + 2 * (len(panels) - 1), max(p.height for p in panels)
                            + _TEXT), "black")
    ImageDraw.Draw(row).text((4, 1), caption, fill="white")
    left = 0
    for panel in panels:
        row.paste(panel, (left, _TEXT))
        left += panel.width + 2
    return row


def _png_problem(path: Path) -> Optional[str]:
    try:
        with Image.open(path) as picture:
            picture.load()  # decodes every row: a cut file raises
    except OSError as error:
        return f"it cannot be read back ({error})"
    return None

"""DICOM adapter of the batch command: a case folder of DICOM MR series in, a DICOM Segmentation object out.

A case folder holds the series of one study, each in its own sub-folder or all files mixed. Headers are read with
pydicom; SimpleITK (GDCM) sorts each series' files into slice order and reads the voxels. A series takes its role
by the name patterns of files and scene nodes (modalities.role_of) applied to its SeriesDescription, else its
ProtocolName; a series in a sub-folder named exactly after a role (t1, t1ce, t2, flair, or t1n, t1c, t2w, t2f)
takes that role whatever its names, which is how a user settles a series the patterns miss or mistake. Series
that match no role (localizers, diffusion, earlier segmentations) are ignored.

The Segmentation references every instance of the reference series (the series whose grid the labels are on);
its segments carry the codes and colours of segments.py.
"""

import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Optional

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.errors import InvalidDicomError
from pydicom.uid import MRImageStorage

from .. import __version__
from ..case import Case, Result
from ..errors import InputError, OutputError
from ..modalities import DISPLAY_NAMES, MODALITIES, ROLE_TOKENS, role_of, role_of_token
from .file_io import PathLike, case_from_images, write_atomically
from .segments import ANATOMY_CODE, CATEGORY_CODE, SEGMENTS, code_parts

_PREAMBLE = 128  # a DICOM file (Part 10) starts with 128 bytes of preamble, then "DICM"
# Same orientation / even slice gaps: tolerances as in DICOM exports of one acquisition (positions are rounded).
_ORIENTATION_TOLERANCE = 1e-4
_GAP_TOLERANCE_MM = 0.01
SEG_SERIES_NUMBER = 9901  # high, so viewers list the segmentation after the series it was made from
SEG_SERIES_DESCRIPTION = "Brain tumor segmentation (BrainTumorFusion)"


def is_dicom_file(path: Path) -> bool:
    try:
        with open(path, "rb") as stream:
            stream.seek(_PREAMBLE)
            return stream.read(4) == b"DICM"
    except OSError:
        return False


def holds_dicom(folder: PathLike) -> bool:
    """Whether folder or a sub-folder holds a DICOM file; stops at the first one, so finding cases stays cheap."""
    for directory, subdirectories, names in os.walk(folder):
        subdirectories.sort()
        if any(is_dicom_file(Path(directory) / name) for name in sorted(names)):
            return True
    return False


@dataclass
class Series:
    """One DICOM series of a case folder; `files` and `headers` (pydicom, without pixels) in slice order once
    sorted."""

    uid: str
    number: str
    description: str
    protocol: str
    modality: str
    sop_class: str
    frames: int
    folder: Path
    files: list[Path] = field(default_factory=list)
    headers: list[pydicom.Dataset] = field(default_factory=list, repr=False)
    unreadable: list[Path] = field(default_factory=list)

    def __str__(self) -> str:
        return f"series {self.number or '?'} '{self.description or self.protocol}'"

    def where(self, case_folder: Path) -> str:
        folder = self.folder.relative_to(case_folder)
        return f"{len(self.files)} files in {case_folder.name}/{folder}" if str(folder) != "." else \
            f"{len(self.files)} files in {case_folder.name}"

    def name_role(self) -> Optional[str]:
        return role_of(self.description) or role_of(self.protocol)

    def describe(self) -> dict:
        return {"series_number": self.number, "series_description": self.description,
                "protocol_name": self.protocol, "series_instance_uid": self.uid, "files": len(self.files)}


@dataclass
class DicomCase:
    """A case folder of DICOM series. Its series and roles are found when first asked for (at the case's turn in a
    batch), so a problem with them fails this case alone."""

    case_id: str
    folder: Path
    dicom: ClassVar[bool] = True
    reference_role: Optional[str] = None  # set by read(): the role whose series the labels are on
    _series: Optional[dict[str, Series]] = field(default=None, repr=False)

    def series(self) -> dict[str, Series]:
        """Role -> Series; InputError for an ambiguous, missing, non-MR or unreadable series."""
        if self._series is None:
            self._series = _assign_roles(self.folder, _find_series(self.folder))
        return self._series

    def roles(self) -> list[str]:
        return list(self.series())

    def grid(self) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
        """(size, spacing) of the first present role's grid, (I, J, K) order, from the headers alone."""
        series = self.series()[next(role for role in MODALITIES if role in self.series())]
        first = series.headers[0]
        size = (int(first.Columns), int(first.Rows), len(series.headers))
        row_spacing, column_spacing = (float(v) for v in first.PixelSpacing)
        return size, (column_spacing, row_spacing, _slice_gap(series.headers) or float(first.get("SliceThickness", 1)))

    def read(self, **preparation) -> tuple[Case, sitk.Image]:
        """(Case, reference image), as file_io.read_case gives them for image files (same `preparation` options)."""
        images = {role: _read_series(series, role, self.folder) for role, series in self.series().items()}
        case, reference = case_from_images(images, self.case_id, **preparation)
        self.reference_role = next(role for role, image in images.items() if image is reference)
        return case, reference

    def describe(self) -> dict:
        """Which series gave each role, for the case's record."""
        return {role: series.describe() for role, series in self.series().items()}


def dicom_case_in(folder: PathLike) -> Optional[DicomCase]:
    folder = Path(folder)
    return DicomCase(folder.name, folder) if holds_dicom(folder) else None


def _find_series(folder: Path) -> list[Series]:
    """Every series under folder, from the headers of its DICOM files."""
    found: dict[str, Series] = {}
    damaged = []
    for directory, subdirectories, names in os.walk(folder):
        subdirectories.sort()
        for name in sorted(names):
            path = Path(directory) / name
            if not is_dicom_file(path):
                continue
            try:
                header = pydicom.dcmread(path, stop_before_pixels=True)
            except (InvalidDicomError, OSError, ValueError, EOFError) as error:
                damaged.append(f"{path.relative_to(folder)} ({error})")
                continue
            if not (header.get("SOPClassUID") or getattr(header, "file_meta", {}).get("MediaStorageSOPClassUID")):
                damaged.append(f"{path.relative_to(folder)} (no SOP Class UID: not a DICOM object)")
                continue
            uid = header.get("SeriesInstanceUID")
            if not uid:  # DICOMDIR and other files that belong to no series
                continue
            series = found.get(uid)
            if series is None:
                series = found[uid] = Series(
                    uid=str(uid), number=str(header.get("SeriesNumber", "")),
                    description=str(header.get("SeriesDescription", "")), protocol=str(header.get("ProtocolName", "")),
                    modality=str(header.get("Modality", "")), sop_class=str(header.get("SOPClassUID", "")),
                    frames=int(header.get("NumberOfFrames", 1) or 1), folder=path.parent)
            elif path.parent != series.folder:
                raise InputError(f"{series} of case {folder.name} is split over the folders {series.folder.name} and "
                                 f"{path.parent.name}. Put the files of one series into one folder.")
            series.files.append(path)
            series.headers.append(header)
    if damaged:
        raise InputError(f"Case {folder.name} has DICOM files that cannot be read: {'; '.join(damaged[:3])}"
                         f"{f' and {len(damaged) - 3} more' if len(damaged) > 3 else ''}. Remove them or export the "
                         "series again.")
    return sorted(found.values(), key=lambda s: (int(s.number) if s.number.isdigit() else 1 << 30, s.description))


def _tokens(role: str) -> str:
    return ", ".join(token for token, token_role in ROLE_TOKENS if token_role == role)


def _assign_roles(folder: Path, all_series: list[Series]) -> dict[str, Series]:
    """Role -> series: a series in a sub-folder named after a role takes that role; the other roles go to the
    series whose names match them. Two series for one role, or none, is an InputError naming the series."""
    by_folder, by_name = defaultdict(list), defaultdict(list)
    for series in all_series:
        if series.modality == "SEG" or "Rows" not in series.headers[0]:  # no image: segmentation, report, state
            continue
        folder_role = role_of_token(series.folder.name) if series.folder != folder else None
        if folder_role:
            by_folder[folder_role].append(series)
        elif series.name_role():
            by_name[series.name_role()].append(series)
    roles = {}
    for role in MODALITIES:
        candidates = by_folder.get(role) or by_name.get(role) or []
        name = DISPLAY_NAMES[role]
        if len(candidates) > 1:
            listed = "; ".join(f"{series} ({series.where(folder)})" for series in candidates)
            how = (f"keep one series in the sub-folder {candidates[0].folder.name}" if role in by_folder else
                   f"remove the others from the case folder, or put the one to use into a sub-folder named {role}")
            raise InputError(f"Case {folder.name} has {len(candidates)} series that match {name}: {listed}. Choose "
                             f"one: {how}.")
        if not candidates:
            seen = "; ".join(str(series) for series in all_series) or "none"
            raise InputError(
                f"Case {folder.name} has no {name} series: no series is in a sub-folder named {role} and no series "
                f"description or protocol name contains {_tokens(role)} (series found: {seen}). Put the {name} series "
                f"into a sub-folder named {role}.")
        roles[role] = _checked(candidates[0], role, folder)
    return roles


def _checked(series: Series, role: str, folder: Path) -> Series:
    """The series, sorted into slice order, if it is a single-frame MR volume whose files can all be read."""
    name = DISPLAY_NAMES[role]
    if series.modality != "MR":
        raise InputError(f"The {name} series of case {folder.name}, {series} ({series.where(folder)}), is "
                         f"{series.modality or 'of no modality'}, not MR: the models segment MRI. Remove it from the "
                         f"case folder or rename its folder.")
    if series.frames > 1 or series.sop_class != MRImageStorage:
        raise InputError(f"The {name} series of case {folder.name}, {series}, is stored as "
                         f"{pydicom.uid.UID(series.sop_class).name} ({series.frames} frames per file); only classic MR "
                         "series (one file per slice) are read. Convert it to NIfTI (e.g. with dcm2niix) and give the "
                         "case as NIfTI files.")
    # GDCM sorts the files into slice order; a file it cannot read (e.g. cut pixel data) is missing from its list.
    ordered = [Path(name) for name in sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(series.folder), series.uid)]
    index, readable = {path: i for i, path in enumerate(series.files)}, set(ordered)
    missing = [path for path in series.files if path not in readable]
    if missing:
        raise InputError(f"The {name} series of case {folder.name}, {series}, has {len(missing)} file(s) whose image "
                         f"cannot be read ({', '.join(p.name for p in missing[:3])}): damaged or cut short. Export the "
                         "series again.")
    series.headers = [series.headers[index[path]] for path in ordered]
    series.files = ordered
    _check_volume(series, name, folder)
    return series


def _normal(header: pydicom.Dataset) -> np.ndarray:
    orientation = np.array(header.ImageOrientationPatient, dtype=float)
    return np.cross(orientation[:3], orientation[3:])


def _slice_gap(headers: list[pydicom.Dataset]) -> Optional[float]:
    if len(headers) < 2:
        return None
    positions = [float(np.dot(_normal(headers[0]), np.array(h.ImagePositionPatient, dtype=float))) for h in headers]
    return float(abs(np.mean(np.diff(positions))))


def _check_volume(series: Series, name: str, folder: Path) -> None:
    """One volume on one grid: the same orientation and size in every file, distinct, evenly spaced positions.
    SimpleITK reads a series with missing slices or several volumes (echoes, time points) with only a warning."""
    headers = series.headers
    what = f"The {name} series of case {folder.name}, {series}"
    if any("ImagePositionPatient" not in h or "ImageOrientationPatient" not in h or "PixelSpacing" not in h
           for h in headers):
        raise InputError(f"{what}, has files without a slice position, orientation or pixel spacing: it is not a "
                         "volume (a screenshot or a projection?). Give the series the scanner acquired.")
    first = np.array(headers[0].ImageOrientationPatient, dtype=float)
    if any(not np.allclose(np.array(h.ImageOrientationPatient, dtype=float), first, atol=_ORIENTATION_TOLERANCE)
           or (h.Rows, h.Columns) != (headers[0].Rows, headers[0].Columns) for h in headers):
        raise InputError(f"{what}, mixes slice orientations or image sizes (a localizer or a multi-plane series?). "
                         "Give a series of one 3D volume.")
    if len(headers) < 2:
        return
    positions = np.array([np.dot(_normal(headers[0]), np.array(h.ImagePositionPatient, dtype=float))
                          for h in headers])
    gaps = np.abs(np.diff(positions))
    distinct = len(np.unique(np.round(positions, 3)))
    if distinct < len(headers):
        raise InputError(f"{what}, has {len(headers)} files at only {distinct} slice positions: it holds several "
                         "volumes (echoes, time points or repeats). Keep the files of one volume in its folder.")
    if np.ptp(gaps) > _GAP_TOLERANCE_MM + 0.01 * gaps.mean():
        raise InputError(f"{what}, has slices at uneven distances ({gaps.min():.2f} to {gaps.max():.2f} mm): a slice "
                         "is missing. Export the complete series again.")


def _read_series(series: Series, role: str, folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(path) for path in series.files])
    try:
        image = reader.Execute()
    except RuntimeError as error:
        reason = str(error).strip().splitlines()[-1].replace("sitk::ERROR: ", "").rstrip(".")
        raise InputError(f"Cannot read the {DISPLAY_NAMES[role]} series of case {folder.name}, {series} "
                         f"({series.where(folder)}): {reason}. Export the series again.") from None
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"The {DISPLAY_NAMES[role]} series of case {folder.name}, {series}, is not a 3D grey-value "
                         "volume (colour or 2D). Give the series the scanner acquired.")
    return image


# --- DICOM Segmentation output ---------------------------------------------------------------------------------

def segment_numbers(labels: np.ndarray) -> np.ndarray:
    """BraTS labels -> DICOM segment numbers (1, 2, 3 in the order of segments.SEGMENTS; 0 background)."""
    numbers = np.zeros(labels.shape, dtype=np.uint8)
    for number, spec in enumerate(SEGMENTS, start=1):
        numbers[labels == spec.label] = number
    return numbers


def coded(code: str):
    """A pydicom Code of a codingScheme^codeValue^codeMeaning string (segments.py)."""
    from pydicom.sr.coding import Code

    scheme, value, meaning = code_parts(code)
    return Code(value, scheme, meaning)


def make_segmentation(labels: np.ndarray, sources: list[pydicom.Dataset], model: str):
    """A highdicom BINARY Segmentation of `labels` (K, rows, columns) whose frame k lies on sources[k]."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    algorithm = hd.AlgorithmIdentificationSequence(name=f"BrainTumorFusion {model}".strip(),
                                                   family=codes.cid7162.ArtificialIntelligence, version=__version__)
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number, segment_label=spec.name, segmented_property_category=coded(CATEGORY_CODE),
            segmented_property_type=coded(spec.type_code), algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm, anatomic_regions=[coded(ANATOMY_CODE)],
            display_color=hd.color.CIELabColor.from_rgb(*(255 * c for c in spec.color)))
        for number, spec in enumerate(SEGMENTS, start=1)]
    return hd.seg.Segmentation(
        source_images=sources, pixel_array=segment_numbers(labels), segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=SEG_SERIES_NUMBER,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="BrainTumorFusion",
        manufacturer_model_name=model or "BrainTumorFusion", software_versions=__version__,
        device_serial_number=__version__, series_description=SEG_SERIES_DESCRIPTION,
        content_label="TUMOR", content_description="Brain tumor segments (BraTS regions)")


def write_segmentation(result: Result, case: DicomCase, path: PathLike) -> None:
    """Write result.labels as a DICOM Segmentation referencing the case's reference series; the file is read back
    and its segments compared per source instance before it takes its final name."""
    from .integrity import dicom_seg_problem

    if case.reference_role is None:
        raise ValueError("read the case (DicomCase.read) before writing its segmentation")
    series = case.series()[case.reference_role]
    labels = np.asarray(result.labels)
    grid = (len(series.headers), int(series.headers[0].Rows), int(series.headers[0].Columns))
    if labels.shape != grid:
        raise OutputError(f"The labels ({labels.shape}) are not on the grid of the {DISPLAY_NAMES[case.reference_role]}"
                          f" series {series} ({grid}), so no DICOM Segmentation can reference it. Please report this.")
    segmentation = make_segmentation(labels, series.headers, result.model)
    expected = segment_numbers(labels)
    uids = [str(header.SOPInstanceUID) for header in series.headers]
    write_atomically(lambda target: segmentation.save_as(target), path,
                     lambda temporary: dicom_seg_problem(temporary, expected, uids))

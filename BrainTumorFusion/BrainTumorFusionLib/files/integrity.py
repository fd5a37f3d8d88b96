"""Is a file just written complete? Writers do not always say: SimpleITK's NIfTI writer returns normally on a full
disk and leaves a truncated gzip stream that its reader then reads without error (the missing slices are zeros).

Each check returns None for a complete file, else a short description of what is wrong.
"""

import gzip
import json
import re
import zlib
from pathlib import Path
from typing import Optional

import numpy as np
import SimpleITK as sitk

_BLOCK = 1 << 20
_CHECKED = (".gz", ".nii", ".nrrd", ".mha", ".json")  # formats that problem_in can check


def gzip_problem(stream) -> Optional[str]:
    """Decompress a gzip stream to its end: a cut stream has no end marker, a damaged one fails its CRC/size."""
    try:
        with gzip.GzipFile(fileobj=stream) as unpacked:
            while unpacked.read(_BLOCK):
                pass
    except (EOFError, OSError, zlib.error) as error:  # OSError covers gzip.BadGzipFile
        return f"its compressed data is cut short or damaged ({error})"
    return None


def nrrd_gzip_problem(path: Path) -> Optional[str]:
    """NRRD with `encoding: gzip` (Slicer's .seg.nrrd): ITK's reader checks the byte count but not the gzip
    trailer, so the data after the header (which ends at the first blank line) is checked here as well."""
    with open(path, "rb") as stream:
        header = b""
        for line in iter(stream.readline, b""):
            if line in (b"\n", b"\r\n"):
                break
            header += line
        else:
            return "its NRRD header has no end"
        if not re.search(rb"^encoding:\s*(gz|gzip)\s*$", header, re.MULTILINE):
            return None
        return gzip_problem(stream)


def problem_in(path: Path, expected: Optional[np.ndarray] = None) -> Optional[str]:
    """What is wrong with a written file, judged by its name: images (.nii.gz, .nrrd, .seg.nrrd, .mha) are
    read back with SimpleITK (and compared with `expected`, the array written, if given), gzip streams
    decompressed to the end, JSON parsed. Other files are not checked: Python's own writers raise on a full disk,
    and an empty file may be meant (a log with no line yet)."""
    path = Path(path)
    name = path.name.lower()
    if not name.endswith(_CHECKED):
        return None
    if path.stat().st_size == 0:
        return "it is empty"
    if name.endswith(".gz"):
        with open(path, "rb") as stream:
            problem = gzip_problem(stream)
        if problem:
            return problem
    if name.endswith(".nrrd"):
        problem = nrrd_gzip_problem(path)
        if problem:
            return problem
    if name.endswith((".nii", ".nii.gz", ".nrrd", ".mha")):
        try:
            image = sitk.ReadImage(str(path))
        except RuntimeError as error:
            return f"it cannot be read back ({str(error).strip().splitlines()[-1]})"
        if expected is not None and not np.array_equal(sitk.GetArrayViewFromImage(image), expected):
            return "the voxels read back differ from those written"
    if name.endswith(".json"):
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except ValueError as error:
            return f"it is not complete JSON ({error})"
    return None


def dicom_seg_problem(path: Path, expected: np.ndarray, source_uids: list[str]) -> Optional[str]:
    """What is wrong with a written DICOM Segmentation: it is read back with highdicom and its segments, decoded
    per source instance (frame k on source_uids[k]), must equal `expected` (segment numbers, 0 background)."""
    import highdicom

    if path.stat().st_size == 0:
        return "it is empty"
    try:
        segmentation = highdicom.seg.segread(path)
        decoded = segmentation.get_pixels_by_source_instance(
            source_uids, combine_segments=True, assert_missing_frames_are_empty=True)  # empty frames are omitted
    except Exception as error:  # a cut file fails in pydicom or highdicom with many kinds of error
        return f"it cannot be read back as a DICOM Segmentation ({type(error).__name__}: {error})"
    if not np.array_equal(decoded, expected):
        return "the segments read back differ from those written"
    return None

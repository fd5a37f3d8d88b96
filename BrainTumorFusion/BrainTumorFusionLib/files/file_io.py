"""File adapter: find cases in a folder, read a case from image files, write label maps on the input grid."""

import gzip
import os
import re
import uuid
import zlib
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, ClassVar, Optional, Union

import numpy as np
import SimpleITK as sitk

from ..case import Case
from ..errors import InputError, OutputError
from ..modalities import DISPLAY_NAMES, MODALITIES, role_of_token
from ..preparation.geometry import ijk_to_ras_of
from ..preparation.inputs import assemble_case
from .integrity import problem_in

IMAGE_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
# A file's role is that of its last name token (`<id>_t1ce`, `<id>-t2f`); anything else (`_seg`, masks, notes)
# is ignored.
_TOKEN = re.compile(r"[_\-.]")
PathLike = Union[str, os.PathLike]


@dataclass
class CaseFiles:
    case_id: str
    files: dict[str, Path]  # role -> image file
    dicom: ClassVar[bool] = False  # dicom_io.DicomCase: a folder of DICOM series

    def roles(self) -> list[str]:
        return list(self.files)


def strip_extension(name: str) -> Optional[str]:
    for extension in IMAGE_EXTENSIONS:
        if name.lower().endswith(extension):
            return name[: -len(extension)]
    return None


def role_of_file(path: PathLike) -> Optional[str]:
    stem = strip_extension(Path(path).name)
    if stem is None:
        return None
    return role_of_token(_TOKEN.split(stem)[-1])


def case_files_in(folder: PathLike) -> Optional[CaseFiles]:
    """CaseFiles of one case folder, or None when it holds no modality image. Two images for one modality
    raise InputError naming both."""
    folder = Path(folder)
    files = {}
    for path in sorted(folder.iterdir()):
        role = role_of_file(path) if path.is_file() else None
        if role is None:
            continue
        if role in files:
            raise InputError(
                f"Case {folder.name} has two {DISPLAY_NAMES[role]} images: {files[role].name} and {path.name}. "
                "Keep one per modality in the case folder.")
        files[role] = path
    return CaseFiles(folder.name, files) if files else None


# Read size of the integrity pass: a multiple of every voxel size, so chunks split the data between voxels.
_CHUNK = 1 << 20
_NIFTI_FLOATS = {16: "f4", 64: "f8"}  # NIfTI datatype codes of float32 and float64


def read_image(path: PathLike, role: str) -> sitk.Image:
    label = DISPLAY_NAMES[role]
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        reason = str(error).strip().splitlines()[-1].replace("sitk::ERROR: ", "").rstrip(".")
        raise InputError(f"Cannot read the {label} image {path}: {reason}. If the file is damaged or truncated, "
                         "re-export it or download it again.") from None
    name = Path(path).name.lower()
    if name.endswith((".nii", ".nii.gz")):
        _check_nifti_data(Path(path), image, label)
    elif name.endswith((".mha", ".mhd")):
        _check_metaimage_data(Path(path), image, label)
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"The {label} image {path} is not a 3D single-channel volume "
            f"({image.GetDimension()}D, {image.GetNumberOfComponentsPerPixel()} components). "
            "Extract one 3D scalar volume first.")
    return image


def _damaged(path: Path, label: str, why: str) -> InputError:
    return InputError(f"The {label} image {path} is damaged or truncated ({why}). Re-export it or download it "
                      "again.")


def _check_nifti_data(path: Path, image: sitk.Image, label: str) -> None:
    """SimpleITK reads a truncated or corrupt .nii(.gz) without error (missing voxels become 0, a cut gzip reads
    as zeros) and turns NaN and infinite voxels into 0. So stream the file once through Python's gzip, which
    raises on a cut stream or a bad checksum, and count the data bytes the header promises and the non-finite
    voxels."""
    meta = image.GetMetaData
    voxels = int(np.prod([int(meta(f"dim[{axis}]")) for axis in range(1, int(meta("dim[0]")) + 1)]))
    offset, expected = int(float(meta("vox_offset"))), voxels * int(meta("bitpix")) // 8
    float_code = _NIFTI_FLOATS.get(int(meta("datatype")))
    received = non_finite = 0
    try:
        with (gzip.open if path.name.lower().endswith(".gz") else open)(path, "rb") as stream:
            header = stream.read(offset)
            byte_order = "<" if int.from_bytes(header[:4], "little") in (348, 540) else ">"  # sizeof_hdr
            dtype = np.dtype(byte_order + float_code) if float_code else None
            for chunk in iter(partial(stream.read, _CHUNK), b""):
                data = chunk[:max(expected - received, 0)]  # bytes past the voxels hold none
                received += len(chunk)
                if dtype is not None:
                    values = np.frombuffer(data[:len(data) - len(data) % dtype.itemsize], dtype)
                    non_finite += int(values.size - np.count_nonzero(np.isfinite(values)))
    except (OSError, EOFError, zlib.error) as error:
        raise _damaged(path, label, str(error).rstrip(".")) from None
    if len(header) < offset or received < expected:
        raise _damaged(path, label, f"{received} of the {expected} data bytes its header gives")
    if non_finite == voxels:
        raise InputError(f"Every voxel of the {label} image {path} is NaN or infinite: it holds no image. Re-export "
                         "it from its source.")
    if non_finite:
        raise InputError(f"The {label} image {path} has NaN or infinite voxels ({non_finite} of {voxels}). Replace "
                         "them (e.g. with 0 outside the brain) and save it again.")


def _check_metaimage_data(path: Path, image: sitk.Image, label: str) -> None:
    """SimpleITK reads a compressed MetaImage with corrupt data without error (it only logs "Uncompress failed"):
    decompress the data once with zlib, which raises on corrupt data, and count the bytes."""
    fields = {}
    with open(path, "rb") as stream:
        while "ElementDataFile" not in fields and (line := stream.readline()):
            key, _, value = line.decode("latin-1").partition("=")
            fields[key.strip()] = value.strip()
        start = stream.tell()
    data_file = fields.get("ElementDataFile", "")
    source, skip = (path, start) if data_file == "LOCAL" else (path.parent / data_file, 0)
    if fields.get("CompressedData", "").lower() != "true" or not source.is_file():  # LIST / pattern data: as read
        return
    expected = image.GetNumberOfPixels() * image.GetNumberOfComponentsPerPixel() * image.GetSizeOfPixelComponent()
    decompressor, received = zlib.decompressobj(), 0
    try:
        with open(source, "rb") as stream:
            stream.seek(skip)
            for chunk in iter(partial(stream.read, _CHUNK), b""):
                received += len(decompressor.decompress(chunk))
    except (OSError, zlib.error) as error:
        raise _damaged(path, label, str(error)) from None
    if not decompressor.eof or received < expected:
        raise _damaged(path, label, f"{received} of {expected} data bytes")


def read_case(case_files: CaseFiles, **preparation) -> tuple[Case, sitk.Image]:
    """(Case, reference SimpleITK image) from CaseFiles (or a dicom_io.DicomCase). `preparation`:
    preparation.assemble_case's register, reference, skull_strip, progress and should_cancel."""
    if case_files.dicom:
        return case_files.read(**preparation)
    images = {role: read_image(case_files.files[role], role) for role in MODALITIES if role in case_files.files}
    return case_from_images(images, case_files.case_id, **preparation)


def case_from_images(images: dict[str, sitk.Image], case_id: str, **preparation) -> tuple[Case, sitk.Image]:
    """(Case, reference image) from one SimpleITK image per present role; the reference is T1ce (or `reference`)
    when present, else the first present modality. `preparation`: as read_case."""
    present = [role for role in MODALITIES if role in images]
    volumes = {role: (sitk.GetArrayFromImage(images[role]), ijk_to_ras_of(images[role])) for role in present}
    case = assemble_case(volumes, case_id, **preparation)
    return case, images[case.reference_role]


def reference_grid(case_files: CaseFiles) -> Optional[tuple[tuple[int, ...], tuple[float, ...]]]:
    """(size, spacing) of the reference grid, (I, J, K), from file headers alone (nothing large is read); None when
    the header cannot be read (read_case then says why)."""
    if case_files.dicom:
        return case_files.grid()
    path = next(case_files.files[role] for role in MODALITIES if role in case_files.files)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return None
    return reader.GetSize()[:3], reader.GetSpacing()[:3]


def write_labels(labels: np.ndarray, reference_image: sitk.Image, path: PathLike) -> None:
    """Write a uint8 label map with exactly the reference image's grid (origin, spacing, direction); the file is
    read back and compared before it takes its final name."""
    labels = np.asarray(labels, dtype=np.uint8)
    image = sitk.GetImageFromArray(labels)
    image.CopyInformation(reference_image)
    write_atomically(lambda target: sitk.WriteImage(image, str(target), True), path,
                     lambda temporary: problem_in(temporary, expected=labels))


# Temporary names are short (a long case name cannot push them past the 255-byte limit of file names) and mark
# this tool's files, so stale ones can be recognised. Earlier versions named them `.partial-<hex><ext>` and, the
# first ones, `.partial-<pid>-<final name>`: a folder they left temporaries in is cleaned too.
TEMPORARY_PREFIX = ".btf-"
_TEMPORARY_NAME = re.compile(r"\.(btf-[0-9a-f]{12}\.partial(\.|$)|partial-[0-9a-f]{12}(\.|$)|partial-[0-9]+-.)")


def write_atomically(write: Callable[[Path], object], path: PathLike,
                     verify: Callable[[Path], Optional[str]] = problem_in) -> None:
    """Write through a unique temporary name in the same folder, flush it to disk, check it is complete, then
    rename, so an interrupted run or a full disk never leaves a half-written file under the final name and two
    writers never share a temporary file.

    `write(temporary)` writes the file; the temporary name keeps the final name's extension (writers such as
    SimpleITK choose the format by it) and is removed if anything fails. `verify(temporary)` says what is wrong
    with the written file, or None (default: integrity.problem_in, by the file's extension)."""
    path = Path(path)
    extension = "".join(path.suffixes[-2:]) if path.name.lower().endswith((".nii.gz", ".seg.nrrd")) else path.suffix
    temporary = path.with_name(f"{TEMPORARY_PREFIX}{uuid.uuid4().hex[:12]}.partial{extension}")
    try:
        write(temporary)
        with open(temporary, "rb+") as stream:
            os.fsync(stream.fileno())
        problem = verify(temporary)
        if problem:
            raise OutputError(f"Writing {path} did not complete: {problem}. The disk may be full: free some space "
                              "or choose another output folder, then run again.")
        os.replace(temporary, path)
    except (OSError, RuntimeError) as error:  # SimpleITK's writers raise RuntimeError
        raise OutputError(f"Cannot write {path}: {str(error).strip().splitlines()[-1]}. Choose a folder you can "
                          "write to, with free space.") from None
    finally:
        if temporary.exists():
            temporary.unlink()


def remove_stale_temporaries(folder: PathLike, older_than: float) -> list[Path]:
    """Remove this tool's temporary files (see write_atomically) last modified before `older_than` (a time.time()
    value) from folder; returns them. Other processes' temporaries that are still being written are newer."""
    removed = []
    for path in Path(folder).iterdir():
        if _TEMPORARY_NAME.match(path.name) and path.is_file() and path.stat().st_mtime < older_than:
            path.unlink(missing_ok=True)  # another part of the run may have removed it first
            removed.append(path)
    return removed


def check_writable_folder(folder: PathLike) -> None:
    """Create folder if needed and prove it is writable, before any work starts."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # A temporary's name: unique across the hosts of a cluster sharing the folder, and removed if left stale.
        probe = folder / f"{TEMPORARY_PREFIX}{uuid.uuid4().hex[:12]}.partial"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise OutputError(f"Output folder {folder} cannot be written ({error.strerror}). "
                          "Choose a folder you can write to, or fix its permissions.") from None

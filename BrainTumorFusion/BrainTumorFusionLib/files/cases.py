"""Finding the cases of an input folder: one sub-folder per case, holding image files (file_io) or, for the batch,
DICOM series (dicom_io)."""

from pathlib import Path
from typing import Optional

from ..errors import InputError
from .dicom_io import dicom_case_in
from .file_io import CaseFiles, PathLike, case_files_in


def case_in(folder: PathLike, dicom: bool = True) -> Optional[CaseFiles]:
    """The case a folder holds: its modality images, else (with `dicom`) its DICOM series; None if neither."""
    return case_files_in(folder) or (dicom_case_in(folder) if dicom else None)


def find_cases(input_dir: PathLike, problems: Optional[dict[str, InputError]] = None, dicom: bool = False,
               exclude: Optional[PathLike] = None, skipped: Optional[list[Path]] = None) -> list[CaseFiles]:
    """Every sub-folder of input_dir that holds modality images, sorted by name (other files ignored). With `dicom`,
    a sub-folder without such images that holds DICOM files is a dicom_io.DicomCase (its series are looked at
    when it is read).

    A case folder that cannot be used (two images for one modality) raises InputError; with `problems` given it
    is left out and its error stored there under the folder's name instead, so a batch records it as failed and
    goes on.

    `exclude`: a folder that is never a case, nor is a sub-folder holding it (the batch's output folder inside
    input_dir: its DICOM SEGs would make it look like a DICOM case). `skipped` collects the sub-folders left out
    for holding no images."""
    input_dir = Path(input_dir)
    if not input_dir.is_dir():
        raise InputError(f"Input folder {input_dir} does not exist. Give a folder with one sub-folder per case.")
    excluded = Path(exclude).resolve() if exclude is not None else None
    cases = []
    for folder in sorted(p for p in input_dir.iterdir() if p.is_dir()):
        if excluded is not None and (folder.resolve() == excluded or folder.resolve() in excluded.parents):
            continue
        try:
            case = case_in(folder, dicom)
        except InputError as error:
            if problems is None:
                raise
            problems[folder.name] = error
            continue
        if case is not None:
            cases.append(case)
        elif skipped is not None:
            skipped.append(folder)
    if not cases and not problems:
        raise InputError(
            f"No case found in {input_dir}. Expected one sub-folder per case holding <id>_t1/_t1ce/_t2/_flair "
            f"(or -t1n/-t1c/-t2w/-t2f) NIfTI or NRRD images{' or DICOM series' if dicom else ''}.")
    return cases

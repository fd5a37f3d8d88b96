"""The batch command on a shared case written as four DICOM MR series, beside the same case as NIfTI files and a
DICOM case with two T1 series: the DICOM case segments to the NIfTI case's labels with the shipped default model,
its DICOM Segmentation decodes back to those labels on the reference (T1ce) series' instances and positions, and it passes
highdicom's reader and, where installed, dicom3tools' dciodvfy, as does its DICOM SR of the RANO measurements; the
ambiguous case fails alone."""

import json
import shutil
import subprocess

import numpy as np
import pytest
import SimpleITK as sitk

from BrainTumorFusionLib.files.dicom_io import segment_numbers
from Testing.batch_cases import run_cli
from Testing.dicom_cases import case_images, write_dicom_case, write_series
from Testing.realdata import brats_case_dir

CASE = "Brats18_CBICA_ABM_1"


def dciodvfy_errors(path):
    """dciodvfy's output on path and its error lines; None when dicom3tools is not installed."""
    tool = shutil.which("dciodvfy")
    if tool is None:
        return None, None
    done = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=120)
    output = done.stdout + done.stderr
    return output, [line for line in output.splitlines() if line.startswith("Error")]


@pytest.mark.slow
def test_dicom_case_segments_like_its_nifti_files_and_its_seg_decodes_back(tmp_path):
    images = case_images(CASE)
    input_dir = tmp_path / "input"
    input_dir.mkdir()
    (input_dir / "nifti").symlink_to(brats_case_dir(CASE), target_is_directory=True)
    write_dicom_case(input_dir / "dicom", images)  # all four series mixed in one folder, file names shuffled
    study = write_dicom_case(input_dir / "two_t1", {role: images[role] for role in ("t1ce", "t2", "flair")},
                             layout="folders")
    for description in ("AX T1 SE", "COR T1 REFORMAT"):
        write_series(images["t1"], input_dir / "two_t1" / description.replace(" ", "_"), study, description)
    output = tmp_path / "out"

    done = run_cli("segment", "--input-dir", input_dir, "--output-dir", output)  # the shipped default model
    assert done.returncode == 1, done.stderr  # the case with two T1 series fails alone
    records = {case: json.loads((output / f"{case}.json").read_text()) for case in ("dicom", "nifti", "two_t1")}
    assert records["dicom"]["status"] == records["nifti"]["status"] == "done", records
    assert records["dicom"]["model_used"] == records["nifti"]["model_used"]
    assert records["two_t1"]["status"] == "failed"
    assert "has 2 series that match T1: series 4 'AX T1 SE'" in records["two_t1"]["reason"]
    assert "series 5 'COR T1 REFORMAT'" in records["two_t1"]["reason"]
    assert {role: series["series_description"] for role, series in records["dicom"]["dicom_series"].items()} == {
        "t1": "AX T1 SE", "t1ce": "AX T1CE SE", "t2": "AX T2 FSE", "flair": "AX FLAIR"}
    assert "dicom_seg.dcm" in " ".join(records["dicom"]["outputs"])

    # Same labels, same grid, as the NIfTI files gave.
    from_nifti = sitk.ReadImage(str(output / "nifti_seg.nii.gz"))
    from_dicom = sitk.ReadImage(str(output / "dicom_seg.nii.gz"))
    labels = sitk.GetArrayFromImage(from_nifti)
    assert np.count_nonzero(labels) > 10_000  # the tumor was found
    np.testing.assert_array_equal(sitk.GetArrayFromImage(from_dicom), labels)
    np.testing.assert_allclose(from_dicom.GetOrigin(), from_nifti.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(from_dicom.GetDirection(), from_nifti.GetDirection(), atol=1e-6)
    assert from_dicom.GetSpacing() == from_nifti.GetSpacing()

    # The DICOM SEG: every frame on the reference (T1ce, the default) instance at its position, segments as the labels.
    import highdicom
    import pydicom

    seg = highdicom.seg.segread(output / "dicom_seg.dcm")
    slices = sorted((pydicom.dcmread(path, stop_before_pixels=True) for path in (input_dir / "dicom").iterdir()
                 if pydicom.dcmread(path, stop_before_pixels=True).SeriesDescription == "AX T1CE SE"),
                key=lambda header: float(header.ImagePositionPatient[2]))
    assert [s.SeriesInstanceUID for s in seg.ReferencedSeriesSequence] == [slices[0].SeriesInstanceUID]
    decoded = seg.get_pixels_by_source_instance([h.SOPInstanceUID for h in slices], combine_segments=True,
                                                assert_missing_frames_are_empty=True)
    np.testing.assert_array_equal(decoded, segment_numbers(labels))
    positions = {h.SOPInstanceUID: [float(v) for v in h.ImagePositionPatient] for h in slices}
    for frame in seg.PerFrameFunctionalGroupsSequence:
        source = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        np.testing.assert_allclose(frame.PlanePositionSequence[0].ImagePositionPatient, positions[source])
    # highdicom's own volume (its slice order and affine, LPS): each plane equals the labels of the T1ce slice at
    # that physical position.
    volume = seg.get_volume(combine_segments=True)
    slice_at = {tuple(np.round(positions[h.SOPInstanceUID], 3)): k for k, h in enumerate(slices)}
    numbers = segment_numbers(labels)
    for index, plane in enumerate(volume.array):
        corner = volume.affine @ np.array([index, 0, 0, 1.0])
        np.testing.assert_array_equal(plane, numbers[slice_at[tuple(np.round(corner[:3], 3))]])

    # The RANO measurements as a DICOM SR referencing that SEG: as many lesions as the record lists.
    report = highdicom.sr.srread(output / "dicom_sr.dcm")
    assert report.CurrentRequestedProcedureEvidenceSequence[0].StudyInstanceUID == seg.StudyInstanceUID
    lesions = records["dicom"]["measurements"]["lesions"]
    groups = report.content.get_volumetric_roi_measurement_groups()
    assert sum(str(g.tracking_identifier).startswith("enhancing lesion") for g in groups) == len(lesions) > 0

    for name in ("dicom_seg.dcm", "dicom_sr.dcm"):
        output_text, errors = dciodvfy_errors(output / name)
        if output_text is not None:
            print(f"dciodvfy {name}:\n{output_text}")
            assert errors == [], output_text

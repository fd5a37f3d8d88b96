"""DICOM case folders: series found and sorted, roles from names (or a role-named sub-folder), the volumes equal
the NIfTI files they were written from; every way a case folder can be unusable is a clear error naming the
series; the DICOM Segmentation decodes back to the labels on the right source instances and a cut one is caught.

Small crops of a real case keep this fast; Testing/e2e/test_dicom_batch.py runs a whole case through the batch."""

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from BrainTumorFusionLib.case import Result
from BrainTumorFusionLib.errors import InputError
from BrainTumorFusionLib.files.cases import find_cases
from BrainTumorFusionLib.files.dicom_io import make_segmentation, segment_numbers, write_segmentation
from BrainTumorFusionLib.files.file_io import read_case
from BrainTumorFusionLib.files.integrity import dicom_seg_problem
from BrainTumorFusionLib.modalities import MODALITIES
from BrainTumorFusionLib.preparation.geometry import ijk_to_ras_of
from Testing.dicom_cases import DESCRIPTIONS, Study, case_images, write_dicom_case, write_series

CASE = "Brats18_CBICA_ABM_1"
CROP = (40, 36, 12)  # I, J, K voxels: small, and not square, so rows and columns cannot be swapped unnoticed


@pytest.fixture(scope="module")
def images():
    return case_images(CASE, crop=CROP)


def only_case(input_dir):
    cases = find_cases(input_dir, dicom=True)
    assert len(cases) == 1
    return cases[0]


def read_error(input_dir):
    with pytest.raises(InputError) as error:
        read_case(only_case(input_dir))
    return str(error.value)


@pytest.mark.parametrize("layout", ["mixed", "folders"])
def test_series_read_back_to_the_nifti_voxels_and_grid(tmp_path, images, layout):
    write_dicom_case(tmp_path / "in" / "patient", images, layout=layout)
    (tmp_path / "in" / "patient" / "notes.txt").write_text("not DICOM: ignored")
    case, reference = read_case(only_case(tmp_path / "in"))
    for channel, role in enumerate(MODALITIES):
        np.testing.assert_array_equal(case.image[channel], sitk.GetArrayFromImage(images[role]))
    np.testing.assert_allclose(case.ijk_to_ras, ijk_to_ras_of(images["t1"]), atol=1e-6)
    assert reference.GetSize() == images["t1"].GetSize()


def test_dicom_cases_sit_beside_nifti_cases_and_only_the_batch_asks_for_them(tmp_path, images):
    write_dicom_case(tmp_path / "b_dicom", images)
    nifti = tmp_path / "a_nifti"
    nifti.mkdir()
    for role, image in images.items():
        sitk.WriteImage(image, str(nifti / f"a_{role}.nii.gz"))
    cases = find_cases(tmp_path, dicom=True)
    assert [(case.case_id, case.dicom) for case in cases] == [("a_nifti", False), ("b_dicom", True)]
    assert [case.case_id for case in find_cases(tmp_path)] == ["a_nifti"]  # Training and tools: image files only


def test_a_role_named_sub_folder_gives_a_series_its_role(tmp_path, images):
    names = {**DESCRIPTIONS, "t1ce": "MPRAGE POST"}  # no role token: the patterns cannot place it
    folder = tmp_path / "in" / "patient"
    write_dicom_case(folder, {role: images[role] for role in ("t1", "t2", "flair")}, descriptions=names)
    assert "has no T1ce series" in read_error(tmp_path / "in")
    write_series(images["t1ce"], folder / "t1ce", Study(), names["t1ce"])
    case = only_case(tmp_path / "in")
    read_case(case)
    assert case.describe()["t1ce"]["series_description"] == "MPRAGE POST"


def test_two_series_for_one_role_are_named_with_what_to_do(tmp_path, images):
    folder = tmp_path / "in" / "patient"
    study = write_dicom_case(folder, images, layout="folders")
    write_series(images["t1"], folder / "series_09", study, "SAG T1 REFORMAT")
    message = read_error(tmp_path / "in")
    assert "has 2 series that match T1" in message
    assert "series 1 'AX T1 SE'" in message and "series 5 'SAG T1 REFORMAT'" in message
    assert "patient/series_09" in message and "sub-folder named t1" in message


def test_a_missing_role_lists_the_series_found(tmp_path, images):
    write_dicom_case(tmp_path / "in" / "patient", {role: images[role] for role in ("t1", "t1ce", "t2")})
    message = read_error(tmp_path / "in")
    assert "has no FLAIR series" in message and "flair, t2f" in message
    assert "series 1 'AX T1 SE'; series 2 'AX T1CE SE'; series 3 'AX T2 FSE'" in message
    assert "sub-folder named flair" in message


def test_a_non_mr_series_with_a_role_name_is_refused(tmp_path, images):
    folder = tmp_path / "in" / "patient"
    study = write_dicom_case(folder, {role: images[role] for role in ("t1", "t2", "flair")})
    write_series(images["t1ce"], folder, study, "T1CE", modality="CT")
    assert "series 4 'T1CE' (12 files in patient), is CT, not MR" in read_error(tmp_path / "in")


@pytest.mark.filterwarnings("ignore:End of file reached:UserWarning")  # pydicom on the cut files
def test_unreadable_files_are_named(tmp_path, images):
    folder = tmp_path / "in" / "patient"
    write_dicom_case(folder, images, layout="folders")
    cut = sorted((folder / "series_03").iterdir())[4]  # T2, pixel data cut short: GDCM skips the file
    cut.write_bytes(cut.read_bytes()[:-700])
    message = read_error(tmp_path / "in")
    assert "T2 series of case patient, series 3 'AX T2 FSE', has 1 file(s) whose image cannot be read" in message
    assert cut.name in message
    cut.write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 20)  # a DICOM preamble and then nothing readable
    assert f"has DICOM files that cannot be read: series_03/{cut.name}" in read_error(tmp_path / "in")


def test_several_volumes_or_a_missing_slice_in_one_series_are_refused(tmp_path, images):
    folder = tmp_path / "in" / "patient"
    study = write_dicom_case(folder, {role: images[role] for role in ("t1", "t1ce", "t2")}, layout="folders")
    flair = write_series(images["flair"], folder / "flair_series", study, "AX FLAIR")
    flair[5].unlink()
    assert "has slices at uneven distances (1.00 to 2.00 mm): a slice is missing" in read_error(tmp_path / "in")
    for path in flair:
        path.unlink(missing_ok=True)
    echoes = images["flair"]
    for echo in range(2):  # two echoes under one series UID, as some scanners store them
        for index, path in enumerate(write_series(echoes, folder / "flair_series", study, "AX FLAIR")):
            dataset = pydicom.dcmread(path)
            dataset.SeriesInstanceUID, dataset.SeriesNumber = "1.2.3.4.5", 4
            dataset.save_as(path.with_name(f"echo{echo}_{index:03d}.dcm"))
            path.unlink()
    assert "has 24 files at only 12 slice positions: it holds several volumes" in read_error(tmp_path / "in")


def written_case(tmp_path, images):
    """(CaseFiles, Case, zero labels on its grid) of the images written as a DICOM case under tmp_path/in."""
    write_dicom_case(tmp_path / "in" / "patient", images)
    case_files = only_case(tmp_path / "in")
    case, _ = read_case(case_files)
    return case_files, case, np.zeros(case.image.shape[1:], dtype=np.uint8)


def test_segmentation_decodes_back_on_the_source_instances(tmp_path, images):
    case_files, case, labels = written_case(tmp_path, images)
    labels[3:8, 10:25, 5:30] = 2
    labels[4:7, 12:20, 8:20] = 4
    labels[5, 14:16, 10:12] = 1
    labels[0] = 2  # first slice: a frame on the first source instance
    path = tmp_path / "out" / "patient_seg.dcm"
    path.parent.mkdir()
    write_segmentation(Result("patient", labels, case.ijk_to_ras, {}, model="hafb"), case_files, path)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left

    import highdicom

    seg = highdicom.seg.segread(path)
    t1 = case_files.series()[case_files.reference_role].headers  # the SEG references the reference series (T1ce)
    decoded = seg.get_pixels_by_source_instance([str(h.SOPInstanceUID) for h in t1], combine_segments=True,
                                                assert_missing_frames_are_empty=True)
    np.testing.assert_array_equal(decoded, segment_numbers(labels))
    positions = {str(h.SOPInstanceUID): [float(v) for v in h.ImagePositionPatient] for h in t1}
    for frame in seg.PerFrameFunctionalGroupsSequence:  # each frame lies where its source instance lies
        source = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        np.testing.assert_allclose(frame.PlanePositionSequence[0].ImagePositionPatient, positions[source])
    assert [s.SegmentLabel for s in seg.SegmentSequence] == [
        "Necrotic / non-enhancing tumor core", "Peritumoral edema", "Enhancing tumor"]
    assert [(s.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator,
             s.SegmentedPropertyTypeCodeSequence[0].CodeValue) for s in seg.SegmentSequence] == [
        ("SCT", "6574001"), ("SCT", "79654002"), ("NCIt", "C113842")]
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == t1[0].SeriesInstanceUID
    assert seg.StudyInstanceUID == t1[0].StudyInstanceUID and seg.FrameOfReferenceUID == t1[0].FrameOfReferenceUID

    # An earlier segmentation left in the case folder is no series of the case.
    (tmp_path / "in" / "patient" / "old_seg.dcm").write_bytes(path.read_bytes())
    read_case(only_case(tmp_path / "in"))


def test_a_cut_or_different_segmentation_is_caught(tmp_path, images):
    case_files, _, labels = written_case(tmp_path, images)
    labels[2:9, 5:30, 5:30] = 2
    headers = case_files.series()["t1"].headers
    uids = [str(h.SOPInstanceUID) for h in headers]
    path = tmp_path / "seg.dcm"
    make_segmentation(labels, headers, "hafb").save_as(path)
    assert dicom_seg_problem(path, segment_numbers(labels), uids) is None
    other = segment_numbers(labels)
    other[5, 10, 10] = 3
    assert dicom_seg_problem(path, other, uids) == "the segments read back differ from those written"
    path.write_bytes(path.read_bytes()[:-300])
    assert dicom_seg_problem(path, segment_numbers(labels), uids).startswith(
        "it cannot be read back as a DICOM Segmentation")

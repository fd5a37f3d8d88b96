import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from BrainTumorFusionLib.errors import InputError, OutputError
from BrainTumorFusionLib.files.cases import find_cases
from BrainTumorFusionLib.files.file_io import (
    CaseFiles,
    check_writable_folder,
    read_case,
    read_image,
    role_of_file,
    write_labels,
)
from Testing.realdata import brats_case_dir


def write_image(path, array=None, vector=False):
    array = np.ones((4, 5, 6), np.int16) if array is None else array
    image = sitk.GetImageFromArray(array, isVector=vector)
    image.SetSpacing((1.0, 1.0, 2.0))
    sitk.WriteImage(image, str(path))


@pytest.mark.parametrize("name, role", [
    ("Brats18_X_t1.nii.gz", "t1"), ("Brats18_X_t1ce.nii.gz", "t1ce"), ("BraTS2021_1_flair.nii.gz", "flair"),
    ("BraTS-GLI-00001-000-t1n.nii.gz", "t1"), ("BraTS-GLI-00001-000-t1c.nii.gz", "t1ce"),
    ("BraTS-GLI-00001-000-t2w.nii.gz", "t2"), ("BraTS-GLI-00001-000-t2f.nii.gz", "flair"),
    ("case_T2.nrrd", "t2"), ("Brats18_X_seg.nii.gz", None), ("notes_t1.txt", None), ("t1", None),
])
def test_role_of_file(name, role):
    assert role_of_file(name) == role


def test_find_cases_ignores_other_files_and_folders(tmp_path):
    for case in ("A", "B"):
        (tmp_path / case).mkdir()
        for suffix in ("t1", "t1ce", "t2", "flair", "seg"):
            write_image(tmp_path / case / f"{case}_{suffix}.nii.gz")
    (tmp_path / "README.txt").write_text("not a case")
    (tmp_path / "empty").mkdir()
    cases = find_cases(tmp_path)
    assert [c.case_id for c in cases] == ["A", "B"]
    assert sorted(cases[0].files) == ["flair", "t1", "t1ce", "t2"]


def test_duplicate_modality_in_a_case_is_rejected(tmp_path):
    (tmp_path / "A").mkdir()
    write_image(tmp_path / "A" / "A_t1c.nii.gz")
    write_image(tmp_path / "A" / "A_t1ce.nrrd")
    with pytest.raises(InputError, match="two T1ce images"):
        find_cases(tmp_path)


def test_no_case_found(tmp_path):
    with pytest.raises(InputError, match="No case found"):
        find_cases(tmp_path)
    with pytest.raises(InputError, match="does not exist"):
        find_cases(tmp_path / "missing")


def test_vector_image_rejected(tmp_path):
    (tmp_path / "A").mkdir()
    write_image(tmp_path / "A" / "A_t1.nrrd", np.ones((4, 5, 6, 3), np.int16), vector=True)
    with pytest.raises(InputError, match="not a 3D single-channel"):
        read_case(find_cases(tmp_path)[0])


def test_labels_written_on_reference_grid(tmp_path):
    reference = sitk.GetImageFromArray(np.zeros((4, 5, 6), np.int16))
    reference.SetOrigin((1.0, 2.0, 3.0))
    reference.SetSpacing((0.5, 0.7, 3.0))
    reference.SetDirection((-1, 0, 0, 0, 1, 0, 0, 0, 1))
    write_labels(np.full((4, 5, 6), 2, np.uint8), reference, tmp_path / "x_seg.nii.gz")
    back = sitk.ReadImage(str(tmp_path / "x_seg.nii.gz"))
    assert back.GetSize() == reference.GetSize()
    np.testing.assert_allclose(back.GetOrigin(), reference.GetOrigin(), atol=1e-5)
    np.testing.assert_allclose(back.GetDirection(), reference.GetDirection(), atol=1e-6)
    assert [p.name for p in tmp_path.iterdir()] == ["x_seg.nii.gz"]  # no temporary file left


def test_unwritable_output_folder(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OutputError, match="cannot be written"):
        check_writable_folder(blocker / "sub")
    reference = sitk.GetImageFromArray(np.zeros((2, 2, 2), np.int16))
    with pytest.raises(OutputError, match="Cannot write"):
        write_labels(np.zeros((2, 2, 2)), reference, blocker / "x.nii.gz")


# --- damaged files: SimpleITK reads cut or corrupt .nii.gz / .nii / compressed .mha without an error -------------
REAL_T1 = "Brats18_CBICA_ABM_1"


def real_t1_file(tmp_path, extension):
    """The real case's T1 in tmp_path as <extension>: the shared file's own bytes for .nii.gz, else re-written."""
    source = brats_case_dir(REAL_T1) / f"{REAL_T1}_t1.nii.gz"
    path = tmp_path / f"{REAL_T1}_t1{extension}"
    if extension == ".nii.gz":
        shutil.copyfile(source, path)
    else:
        sitk.WriteImage(sitk.ReadImage(str(source)), str(path), True)
    return path


def cut(path, size):
    data = path.read_bytes()
    path.write_bytes(data[:size])


def flip_byte(path, position):
    data = bytearray(path.read_bytes())
    data[position] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("extension", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_an_intact_real_file_still_reads(tmp_path, extension):
    image = read_image(real_t1_file(tmp_path, extension), "t1")
    assert image.GetSize() == (240, 240, 155) and sitk.GetArrayViewFromImage(image).any()


@pytest.mark.parametrize("extension, damage", [
    pytest.param(".nii.gz", lambda path: cut(path, path.stat().st_size // 2), id="nii.gz-half"),  # read half before
    pytest.param(".nii.gz", lambda path: cut(path, 200), id="nii.gz-200-bytes"),  # read as "all zero" before
    pytest.param(".nii.gz", lambda path: flip_byte(path, path.stat().st_size // 2), id="nii.gz-flipped-byte"),
    pytest.param(".nii.gz", lambda path: flip_byte(path, path.stat().st_size - 6), id="nii.gz-bad-checksum"),
    pytest.param(".nii", lambda path: cut(path, path.stat().st_size // 2), id="nii-half"),
    pytest.param(".nrrd", lambda path: cut(path, path.stat().st_size // 2), id="nrrd-half"),  # its reader raises
    pytest.param(".mha", lambda path: flip_byte(path, path.stat().st_size // 2), id="mha-flipped-byte"),
])
def test_a_damaged_file_is_rejected_with_its_name(tmp_path, extension, damage):
    path = real_t1_file(tmp_path, extension)
    damage(path)
    with pytest.raises(InputError, match="damaged or truncated") as error:
        read_image(path, "t1")
    message = str(error.value)
    assert str(path) in message and "T1" in message and "re-export" in message.lower()


@pytest.mark.parametrize("extension", [".nii.gz", ".nii", ".nrrd"])
def test_an_all_nan_file_says_nan_not_all_zero(tmp_path, extension):
    path = tmp_path / f"A_flair{extension}"
    write_image(path, np.full((4, 5, 6), np.nan, np.float32))  # the NIfTI reader turns NaN into 0
    with pytest.raises(InputError, match="Every voxel of the FLAIR .*NaN or infinite: it holds no image"):
        read_case(CaseFiles("A", {"flair": path}))


def test_some_nan_or_infinite_voxels_in_a_nifti_file_are_rejected_as_in_other_formats(tmp_path):
    array = np.ones((4, 5, 6), np.float64)
    array[0, 0, :2] = np.nan, np.inf
    write_image(tmp_path / "A_t2.nii.gz", array)
    with pytest.raises(InputError, match=r"NaN or infinite voxels \(2 of 120\)"):
        read_image(tmp_path / "A_t2.nii.gz", "t2")


def test_the_same_real_t1_file_in_all_four_roles_is_rejected():
    """Before: WT 674 mL and grade "LGG 0.9997" with no warning."""
    t1 = brats_case_dir(REAL_T1) / f"{REAL_T1}_t1.nii.gz"
    with pytest.raises(InputError, match="T1 and T1ce hold the same image.*Each role needs its own sequence"):
        read_case(CaseFiles(REAL_T1, {role: t1 for role in ("t1", "t1ce", "t2", "flair")}))

"""Grids, resampling and input validation (synthetic data: geometry and edge cases only)."""

import numpy as np
import pytest
import SimpleITK as sitk

from BrainTumorFusionLib.errors import InputError
from BrainTumorFusionLib.preparation.geometry import ijk_to_ras_of, image_from_array, resample_onto
from BrainTumorFusionLib.preparation.inputs import assemble_case
from Testing.realdata import brats_case_dir


def oblique_matrix(handedness=1, spacing=(0.9, 1.1, 2.5), origin=(10.0, -20.0, 5.0)):
    angle = np.deg2rad(20)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    rotation[:, 2] *= handedness
    matrix = np.eye(4)
    matrix[:3, :3] = rotation @ np.diag(spacing)
    matrix[:3, 3] = origin
    return matrix


@pytest.mark.parametrize("handedness", [1, -1])
def test_sitk_round_trip_keeps_ijk_to_ras(handedness):
    matrix = oblique_matrix(handedness)
    image = image_from_array(np.zeros((4, 5, 6), np.float32), matrix)
    np.testing.assert_allclose(ijk_to_ras_of(image), matrix, atol=1e-9)
    # Physical point of voxel (i, j, k) = (1, 2, 3) agrees with SimpleITK's own (LPS) computation.
    lps = np.array(image.TransformIndexToPhysicalPoint((1, 2, 3)))
    ras = (matrix @ [1, 2, 3, 1])[:3]
    np.testing.assert_allclose(lps * [-1, -1, 1], ras, atol=1e-9)


def test_resample_onto_identity_grid_is_exact():
    matrix = oblique_matrix()
    array = np.random.default_rng(0).random((6, 7, 8)).astype(np.float32)
    np.testing.assert_allclose(resample_onto(array, matrix, array.shape, matrix), array, atol=1e-6)


def test_resample_onto_shifted_grid_moves_content_in_physical_space():
    matrix = np.diag([1.0, 1.0, 1.0, 1.0])
    array = np.zeros((10, 10, 10), np.float32)
    array[5, 5, 5] = 1.0
    shifted = matrix.copy()
    shifted[:3, 3] = [2.0, 0.0, 0.0]  # target grid starts 2 mm further along I
    out = resample_onto(array, matrix, array.shape, shifted)
    assert out[5, 5, 3] == pytest.approx(1.0)


def volumes(shape=(8, 9, 10), matrix=None):
    matrix = np.eye(4) if matrix is None else matrix
    rng = np.random.default_rng(1)
    return {role: (rng.random(shape).astype(np.float32) + 1, matrix) for role in ("t1", "t1ce", "t2", "flair")}


def test_assemble_case_stacks_in_modality_order():
    vols = volumes()
    case = assemble_case(vols, "c")
    assert case.image.shape == (4, 8, 9, 10) and case.present == (True,) * 4
    np.testing.assert_array_equal(case.image[3], vols["flair"][0])
    assert case.voxel_volume_ml == pytest.approx(0.001)


def test_missing_modality_gives_zero_channel():
    vols = volumes()
    vols["t2"] = None
    case = assemble_case(vols, "c")
    assert case.present == (True, True, False, True) and not case.image[2].any()


def test_different_grid_is_resampled_with_warning():
    vols = volumes()
    other = np.eye(4)
    other[:3, :3] *= 0.5
    vols["flair"] = (np.ones((16, 18, 20), np.float32), other)
    case = assemble_case(vols, "c")
    assert case.image.shape == (4, 8, 9, 10)
    assert any("FLAIR" in w and "resampled" in w for w in case.warnings)


@pytest.mark.parametrize("bad, words", [
    (np.zeros((8, 9, 10), np.float32), "all zero"),
    (np.full((8, 9, 10), np.nan, np.float32), "Every voxel of the T1ce volume is NaN or infinite: it holds no image"),
    (np.where(np.eye(10)[:9] > 0, np.nan, 1.0)[None].repeat(8, 0).astype(np.float32), "contains NaN or infinite"),
    (np.ones((2, 8, 9, 10), np.float32), "4 dimensions"),
    (np.ones((0, 9, 10), np.float32), "empty"),
])
def test_bad_volumes_are_rejected_with_the_role_named(bad, words):
    vols = volumes()
    vols["t1ce"] = (bad, np.eye(4))
    with pytest.raises(InputError, match=words) as error:
        assemble_case(vols, "c")
    assert "T1ce" in str(error.value)


def test_no_volume_and_non_overlapping_volume():
    with pytest.raises(InputError, match="No input volume"):
        assemble_case({}, "c")
    vols = volumes()
    far = np.eye(4)
    far[:3, 3] = 1000.0
    vols["t2"] = (np.ones((8, 9, 10), np.float32), far)
    with pytest.raises(InputError, match="does not overlap"):
        assemble_case(vols, "c")


def test_infinite_values_rejected():
    vols = volumes()
    array = np.ones((8, 9, 10), np.float32)
    array[1, 2, 3] = np.inf
    vols["flair"] = (array, np.eye(4))
    with pytest.raises(InputError, match="infinite"):
        assemble_case(vols, "c")
    assert sitk.Version.MajorVersion() >= 2


def real_t1():
    case_id = "Brats18_CBICA_ABM_1"
    return sitk.GetArrayFromImage(sitk.ReadImage(str(brats_case_dir(case_id) / f"{case_id}_t1.nii.gz")))


@pytest.mark.parametrize("copy", [
    pytest.param(lambda t1, rng: t1.astype(np.float32), id="identical"),
    pytest.param(lambda t1, rng: t1 * 2.5 + 100.0 * (t1 > 0), id="rescaled"),
    pytest.param(lambda t1, rng: t1 + rng.normal(0, 0.02 * t1[t1 > 0].std(), t1.shape) * (t1 > 0), id="noisy"),
])
def test_the_same_image_in_two_roles_is_rejected(copy):
    t1 = real_t1()
    vols = {"t1": (t1, np.eye(4)), "flair": (copy(t1, np.random.default_rng(0)).astype(np.float32), np.eye(4))}
    with pytest.raises(InputError, match="T1 and FLAIR hold the same image.*Each role needs its own sequence"):
        assemble_case(vols, "c")

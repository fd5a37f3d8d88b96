"""Training.data: discovery with label maps, and the prepared cache = the library's `prepare` + labels on its grid."""

import numpy as np
import pytest
import SimpleITK as sitk

from BrainTumorFusionLib.engine.preprocessing import prepare
from BrainTumorFusionLib.files.file_io import case_files_in, read_case
from BrainTumorFusionLib.preparation.geometry import image_from_array
from Testing.training.training_support import CASES, brats_case_dir, make_input, workspace
from Training.data import cache_case, cache_path, discover, group_from_id, labels_file, load_cached, regions_from_labels

CASE = CASES[0]


@pytest.fixture(scope="module")
def case_and_labels():
    folder = brats_case_dir(CASE)
    case, _ = read_case(case_files_in(folder))
    seg = sitk.ReadImage(str(folder / f"{CASE}_seg.nii.gz"))
    return case, seg


def test_regions_are_nested_and_accept_label_3():
    labels = np.array([0, 1, 2, 3, 4], dtype=np.uint8)
    wt, tc, et = regions_from_labels(labels)
    np.testing.assert_array_equal(wt, [0, 1, 1, 1, 1])
    np.testing.assert_array_equal(tc, [0, 1, 0, 1, 1])
    np.testing.assert_array_equal(et, [0, 0, 0, 1, 1])


def test_discovery_finds_cases_and_label_maps_in_both_namings(tmp_path):
    make_input(tmp_path, CASES[:2])
    # BraTS 2023 naming (-t1n/-t1c/-t2w/-t2f, -seg), as symlinks to a real case's files.
    folder = tmp_path / "BraTS-GLI-00000-000"
    folder.mkdir()
    source = brats_case_dir(CASE)
    for old, new in (("t1", "t1n"), ("t1ce", "t1c"), ("t2", "t2w"), ("flair", "t2f"), ("seg", "seg")):
        (folder / f"BraTS-GLI-00000-000-{new}.nii.gz").symlink_to(source / f"{CASE}_{old}.nii.gz")
    # A case without labels is left out of training data.
    unlabelled = tmp_path / "Brats18_NOLABEL_1"
    unlabelled.mkdir()
    (unlabelled / "Brats18_NOLABEL_1_flair.nii.gz").symlink_to(source / f"{CASE}_flair.nii.gz")

    cases = discover(tmp_path)
    assert sorted(cases) == sorted(list(CASES[:2]) + ["BraTS-GLI-00000-000"])
    assert set(cases["BraTS-GLI-00000-000"].files) == {"t1", "t1ce", "t2", "flair"}
    assert labels_file(folder).name == "BraTS-GLI-00000-000-seg.nii.gz"
    assert labels_file(brats_case_dir(CASE)).name == f"{CASE}_seg.nii.gz"
    assert group_from_id("BraTS-GLI-00000-000") == "BraTS-GLI"


def test_cache_holds_the_library_preparation_at_2mm(case_and_labels):
    """Image = library prepare() in float16; regions = the label map resampled onto that grid in physical space."""
    case, seg = case_and_labels
    _, cache_dir = workspace()
    cached = load_cached(cache_path(cache_dir, (2.0, 2.0, 2.0), CASE))
    prepared = prepare(case, (2.0, 2.0, 2.0))
    assert cached["image"].shape == prepared.image.shape and cached["regions"].shape == (3,) + prepared.image.shape[1:]
    np.testing.assert_array_equal(cached["image"], prepared.image.astype(np.float16).astype(np.float32))
    np.testing.assert_allclose(cached["ijk_to_ras"], prepared.model_ijk_to_ras)
    assert cached["present"].all()

    # Independent route: SimpleITK resamples the whole label image onto the cached grid (no crop).
    reference = image_from_array(np.zeros(prepared.image.shape[1:], np.uint8), cached["ijk_to_ras"])
    direct = sitk.GetArrayFromImage(sitk.Resample(seg, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0))
    expected = regions_from_labels(direct)
    full = regions_from_labels(sitk.GetArrayFromImage(seg))
    voxel_ml_1mm, voxel_ml_2mm = 0.001, 0.008
    for i in range(3):
        a, b = cached["regions"][i].astype(bool), expected[i].astype(bool)
        assert a.any()
        dice = 2 * (a & b).sum() / (a.sum() + b.sum())
        assert dice > 0.97, (i, dice)
        # Same volume as on the 1 mm grid (within 5 %), and the same centre in physical space (within 1 mm).
        assert abs(a.sum() * voxel_ml_2mm - full[i].sum() * voxel_ml_1mm) < 0.05 * full[i].sum() * voxel_ml_1mm
        centre_2mm = cached["ijk_to_ras"] @ np.append(np.argwhere(a).mean(0)[::-1], 1.0)
        centre_1mm = case.ijk_to_ras @ np.append(np.argwhere(full[i]).mean(0)[::-1], 1.0)
        assert np.linalg.norm(centre_2mm[:3] - centre_1mm[:3]) < 1.0


def test_native_spacing_cache_is_exactly_the_cropped_case(tmp_path, case_and_labels):
    case, seg = case_and_labels
    files = case_files_in(brats_case_dir(CASE))
    path = cache_case(files, tmp_path, None)
    cached = load_cached(path)
    prepared = prepare(case, None)
    np.testing.assert_array_equal(cached["image"], prepared.image.astype(np.float16).astype(np.float32))
    np.testing.assert_array_equal(cached["regions"], regions_from_labels(sitk.GetArrayFromImage(seg)[prepared.crop]))
    # An up-to-date cache file is reused, not prepared again.
    stamp = path.stat().st_mtime_ns
    assert cache_case(files, tmp_path, None) == path and path.stat().st_mtime_ns == stamp

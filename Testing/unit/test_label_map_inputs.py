"""A label map given as an image (issue 33): a ground truth saved as <id>_flair.nii.gz was segmented (WT 26 of 61
mL). geometry.check_volume refuses a volume of a handful of small integers in every role, for files and (see
Testing/slicer/test_scene_label_map_values.py) scene volumes; it never fires on the real MR images."""


import numpy as np
import pytest
import SimpleITK as sitk

from BrainTumorFusionLib.app import cli
from BrainTumorFusionLib.errors import InputError
from BrainTumorFusionLib.files.file_io import CaseFiles, read_case
from BrainTumorFusionLib.modalities import DISPLAY_NAMES, MODALITIES
from BrainTumorFusionLib.preparation.geometry import LABEL_VALUES, check_volume, label_values
from BrainTumorFusionLib.preparation.inputs import assemble_case
from Testing.batch_cases import intensity_catalogue, write_small_case
from Testing.realdata import BRATS_DIR, brats_case_dir

CASE = "Brats18_CBICA_ABM_1"


def case_file(role, case_id=CASE):
    return brats_case_dir(case_id) / f"{case_id}_{role}.nii.gz"


def refusal(label, values="0, 1, 2, 4"):
    return (rf"The {label} volume looks like a label map \(a segmentation or mask: its voxels are only the values "
            rf"{values}\), not an MR image\. Give the {label} image itself \(file or selected volume\), not a "
            r"segmentation such as <id>_seg\.nii\.gz or a brain mask\.")


@pytest.mark.parametrize("role", MODALITIES)
def test_the_ground_truth_file_in_any_role_is_refused(role):
    files = {other: case_file(other) for other in MODALITIES}
    files[role] = case_file("seg")
    with pytest.raises(InputError, match=refusal(DISPLAY_NAMES[role])):
        read_case(CaseFiles(CASE, files))


def test_the_ground_truth_saved_as_flair_fails_alone_in_a_batch(tmp_path, capsys):
    """The finding: <id>_flair.nii.gz holding the ground truth, segmented through the batch command."""
    inputs = tmp_path / "input"
    for case_id in ("good", "truth_as_flair"):
        write_small_case(inputs, case_id, size=(48, 48, 32))
    flair = inputs / "truth_as_flair" / "truth_as_flair_flair.nii.gz"
    image = sitk.ReadImage(str(flair))
    truth = sitk.ReadImage(str(case_file("seg", "Brats18_2013_11_1")))  # batch_cases' source case
    crop = sitk.Resample(truth, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, truth.GetPixelID())
    assert set(np.unique(sitk.GetArrayViewFromImage(crop))) == {0, 1, 2, 4}
    sitk.WriteImage(crop, str(flair), True)
    output = tmp_path / "out"
    code = cli.main(["segment", "--input-dir", str(inputs), "--output-dir", str(output), "--model", "intensity",
                     "--catalogue", str(intensity_catalogue(tmp_path / "models")), "--device", "cpu"])
    assert code == 1 and "1 of 2 cases done" in capsys.readouterr().out
    summary = (output / "summary.csv").read_text()
    assert "FLAIR volume looks like a label map" in summary and "0, 1, 2, 4" in summary
    assert not (output / "truth_as_flair.seg.nrrd").exists()


@pytest.mark.parametrize("kind, values", [
    (np.uint8, "0, 1, 2, 4"), (np.int16, "0, 1, 2, 4"), (np.float32, "0, 1, 2, 4"), (np.float64, "0, 1, 2, 4")])
def test_a_label_map_of_any_voxel_type_is_refused(kind, values):
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(case_file("seg")))).astype(kind)
    with pytest.raises(InputError, match=refusal("T2", values)):
        check_volume("t2", truth)


def test_brats_2023_labels_and_a_brain_mask_are_refused():
    t1 = sitk.GetArrayFromImage(sitk.ReadImage(str(case_file("t1"))))
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(case_file("seg"))))
    volumes = {role: (sitk.GetArrayFromImage(sitk.ReadImage(str(case_file(role)))), np.eye(4)) for role in MODALITIES}
    volumes["t1"] = ((t1 > 0).astype(np.uint8), np.eye(4))  # a binary brain mask given as T1
    with pytest.raises(InputError, match=refusal("T1", "0, 1")):
        assemble_case(volumes, "mask")
    volumes["t1"] = ((t1 > 0).astype(np.float32), np.eye(4))
    with pytest.raises(InputError, match=refusal("T1", "0, 1")):
        assemble_case(volumes, "mask")
    with pytest.raises(InputError, match=refusal("T1ce", "0, 1, 2, 3")):
        check_volume("t1ce", np.where(truth == 4, 3, truth).astype(np.uint8))  # BraTS 2023: enhancing is 3


def test_what_is_not_a_label_map_passes():
    rng = np.random.default_rng(0)
    shape = (20, 30, 40)
    assert label_values(np.ones(shape, np.float32)) is None  # constant: no labels (synthetic test volumes)
    assert label_values(rng.integers(0, LABEL_VALUES + 1, shape).astype(np.int16)) is None  # one value too many
    assert label_values(rng.integers(0, 2, shape) * 1000) is None  # not small
    assert label_values(rng.integers(-1, 2, shape)) is None  # negative
    assert label_values(rng.integers(0, 2, shape) * 0.5) is None  # fractions
    few = np.zeros((100, 100, 100), np.int16)  # sampled every 10th voxel
    few[5, 5, 5] = 300  # one voxel out of the label range, which the strided sample misses: the full read sees it
    few[10:, :, :] = 1
    assert label_values(few) is None
    few[5, 5, 5] = 7  # ... and one label the sample misses is still listed
    assert label_values(few) == [0, 1, 7]


def test_a_real_image_is_not_a_label_map():
    flair = sitk.GetArrayFromImage(sitk.ReadImage(str(case_file("flair"))))
    assert label_values(flair) is None


@pytest.mark.slow
def test_no_real_mr_image_looks_like_a_label_map_and_every_ground_truth_does():
    """All 4 modalities of the 27 shared cases: the fewest distinct values of one is 212 (T1ce of Brats18_2013_11_1),
    LABEL_VALUES is 8. About 9 s (reading the 135 files)."""
    cases = sorted(path.name for path in BRATS_DIR.iterdir() if path.is_dir())
    assert len(cases) == 27
    fewest = {}
    for case_id in cases:
        for role in MODALITIES:
            array = sitk.GetArrayFromImage(sitk.ReadImage(str(case_file(role, case_id))))
            check_volume(role, array)
            fewest[f"{case_id} {role}"] = np.unique(array).size
        truth = sitk.GetArrayFromImage(sitk.ReadImage(str(case_file("seg", case_id))))
        assert label_values(truth) == [0, 1, 2, 4], case_id
    assert min(fewest.values()) == 212 > 25 * LABEL_VALUES

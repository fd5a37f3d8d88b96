import numpy as np
import pytest

from BrainTumorFusionLib.case import Case
from BrainTumorFusionLib.engine.postprocessing import brats_labels, regions_to_labels, uncrop
from BrainTumorFusionLib.engine.preprocessing import brain_bounding_box, crop_matrix, normalize, prepare, resampled_grid
from BrainTumorFusionLib.measurements.regions import region_volumes
from BrainTumorFusionLib.preparation.geometry import spacing_of


def test_bounding_box_covers_foreground_of_any_channel_with_margin():
    image = np.zeros((2, 20, 20, 20), np.float32)
    image[0, 5, 6, 7] = 1
    image[1, 10, 12, 14] = 1
    box = brain_bounding_box(image, margin=2)
    assert box == (slice(3, 13), slice(4, 15), slice(5, 17))


def test_crop_matrix_moves_origin_to_first_voxel():
    matrix = np.diag([2.0, 3.0, 4.0, 1.0])
    moved = crop_matrix(matrix, (slice(1, 5), slice(2, 6), slice(3, 7)))  # K, J, I
    np.testing.assert_allclose(moved[:3, 3], [3 * 2.0, 2 * 3.0, 1 * 4.0])


def test_normalize_zscores_non_zero_voxels_only():
    image = np.zeros((4, 4, 4, 4), np.float32)
    image[0, :2] = np.arange(32).reshape(2, 4, 4) + 1
    out = normalize(image, (True, False, False, False))
    values = out[0][image[0] != 0]
    assert values.mean() == pytest.approx(0, abs=1e-6) and values.std() == pytest.approx(1, abs=1e-5)
    assert not out[0][image[0] == 0].any() and not out[1:].any()


def test_resampled_grid_keeps_field_of_view():
    matrix = np.diag([1.0, 1.0, 1.0, 1.0])
    shape, new = resampled_grid((100, 80, 60), matrix, (2.0, 2.0, 2.0))
    assert shape == (50, 40, 30)
    np.testing.assert_allclose(spacing_of(new), [2, 2, 2])
    np.testing.assert_allclose(new[:3, 3], [0.5, 0.5, 0.5])  # FOV edge stays at -0.5 mm


def test_prepare_resamples_to_model_spacing_and_back_shape():
    image = np.zeros((4, 40, 40, 40), np.float32)
    image[:, 10:30, 8:32, 5:35] = np.random.default_rng(0).random((4, 20, 24, 30)) + 1
    case = Case("c", image, np.eye(4), (True,) * 4)
    prepared = prepare(case, spacing=(2.0, 2.0, 2.0))
    assert prepared.resampled and prepared.cropped_shape == (24, 28, 34)
    assert prepared.image.shape == (4, 12, 14, 17)
    same = prepare(case, spacing=(1.02, 1.0, 0.99))  # within tolerance: no resampling
    assert not same.resampled and same.image.shape == (4, 24, 28, 34)
    np.testing.assert_array_equal(same.model_ijk_to_ras, same.cropped_ijk_to_ras)


def test_prepared_moves_data_between_its_grids():
    image = np.zeros((4, 40, 40, 40), np.float32)
    image[:, 10:30, 8:32, 5:35] = 1
    labels = np.zeros((40, 40, 40), np.uint8)
    labels[14:26, 12:28, 9:31] = 2
    case = Case("c", image, np.eye(4), (True,) * 4)
    prepared = prepare(case, spacing=(2.0, 2.0, 2.0))
    on_model_grid = prepared.labels_on_model_grid(labels)
    assert on_model_grid.shape == prepared.image.shape[1:] and on_model_grid.dtype == np.uint8
    assert set(np.unique(on_model_grid)) == {0, 2}  # nearest neighbour: no new values
    back = prepared.to_crop_grid(prepared.to_model_grid(labels[prepared.crop][None].astype(np.float32)))
    assert back.shape == (1,) + prepared.cropped_shape
    assert np.abs(back[0] - labels[prepared.crop]).mean() < 0.1
    same = prepare(case)  # not resampled: the crop is the model grid, nothing is copied
    probabilities = np.zeros((3,) + same.cropped_shape, np.float32)
    assert same.to_crop_grid(probabilities) is probabilities
    np.testing.assert_array_equal(same.labels_on_model_grid(labels), labels[same.crop])


def test_regions_to_labels_is_nested():
    probabilities = np.zeros((3, 1, 1, 4), np.float32)
    probabilities[0, 0, 0] = [0.9, 0.9, 0.9, 0.1]  # WT
    probabilities[1, 0, 0] = [0.1, 0.9, 0.9, 0.9]  # TC (last voxel outside WT: dropped)
    probabilities[2, 0, 0] = [0.9, 0.1, 0.9, 0.9]  # ET (first voxel outside TC: dropped)
    assert regions_to_labels(probabilities)[0, 0].tolist() == [2, 1, 4, 0]


def test_volumes_and_uncrop():
    labels = np.array([[[1, 1, 2, 4, 0]]], np.uint8)
    volumes = region_volumes(labels, 0.5)
    assert volumes == {"NCR": 1.0, "ED": 0.5, "ET": 0.5, "TC": 1.5, "WT": 2.0}
    full = uncrop(labels, (slice(1, 2), slice(0, 1), slice(2, 7)), (3, 2, 8))
    assert full.sum() == labels.sum() and full[1, 0, 2:7].tolist() == [1, 1, 2, 4, 0]


def test_brats_2023_enhancing_label_is_accepted():
    assert brats_labels(np.array([0, 1, 2, 3, 4])).tolist() == [0, 1, 2, 4, 4]


def planted_tumor():
    """A 20^3 label map: one tumor (edema around necrosis around enhancing) and islands of 1 voxel each."""
    labels = np.zeros((20, 20, 20), np.uint8)
    labels[2:10, 2:10, 2:10] = 2
    labels[4:8, 4:8, 4:8] = 1
    labels[5:7, 5:7, 5:7] = 4
    labels[15, 15, 15] = 2  # a WT island
    labels[2, 9, 2] = 4  # an ET island inside edema, touching no core
    return labels


def test_cleanup_gives_small_islands_the_label_around_them_and_is_off_by_default():
    from BrainTumorFusionLib.engine.postprocessing import Cleanup, clean_labels
    labels, voxel_ml = planted_tumor(), 0.001
    assert np.array_equal(clean_labels(labels, voxel_ml, Cleanup()), labels)
    no_wt_island = clean_labels(labels, voxel_ml, Cleanup(wt_island_ml=0.002))
    assert no_wt_island[15, 15, 15] == 0  # a 1-voxel WT component
    assert np.array_equal(no_wt_island[:12, :12, :12], labels[:12, :12, :12])  # the ET island lies inside WT
    no_et_island = clean_labels(labels, voxel_ml, Cleanup(et_island_ml=0.002))
    assert no_et_island[2, 9, 2] == 1 and (no_et_island[5:7, 5:7, 5:7] == 4).all()  # 8-voxel ET stays
    no_tc_island = clean_labels(labels, voxel_ml, Cleanup(tc_island_ml=0.002))
    assert no_tc_island[2, 9, 2] == 2
    # Less than 0.01 mL of ET in the whole case: relabelled necrotic core (nnU-Net's BraTS rule).
    no_et = clean_labels(labels, voxel_ml, Cleanup(min_enhancing_ml=0.01))
    assert not (no_et == 4).any() and (no_et[5:7, 5:7, 5:7] == 1).all()
    assert np.array_equal(clean_labels(labels, voxel_ml, Cleanup(min_enhancing_ml=0.005)), labels)


@pytest.mark.needs("panoptica")
def test_tune_cleanup_keeps_a_step_only_when_it_raises_dice():
    from Training.tune_cleanup import tune
    truth = planted_tumor()
    truth[15, 15, 15] = 0
    truth[2, 9, 2] = 2
    predicted = truth.copy()
    predicted[14:16, 14:16, 14:16] = 2  # an 8-voxel (0.04 mL) false WT island
    chosen = tune([("synthetic", predicted, truth, 0.005)], printer=lambda *_: None)
    assert chosen.wt_island_ml == 0.05  # the smallest volume that removes it
    assert (chosen.tc_island_ml, chosen.et_island_ml, chosen.min_enhancing_ml) == (0, 0, 0)  # they cost Dice
    unchanged = tune([("synthetic", truth, truth, 0.005)], printer=lambda *_: None)
    assert unchanged == type(chosen)()  # a perfect prediction needs no clean-up


@pytest.mark.needs("panoptica")
def test_tune_cleanup_scores_the_tumor_box_as_the_whole_grid():
    from BrainTumorFusionLib.engine.postprocessing import Cleanup
    from Training.tune_cleanup import mean_dice, tumor_box

    truth = np.zeros((30, 30, 30), np.uint8)
    truth[10:16, 10:16, 10:16] = 2
    truth[12:14, 12:14, 12:14] = 4
    predicted = truth.copy()
    predicted[20, 25, 3] = 2  # a far island sets the box's corner
    predicted[11, 11, 11] = 1
    box = tumor_box(predicted, truth)
    assert box[0].shape == (13, 18, 15)
    for cleanup in (Cleanup(), Cleanup(wt_island_ml=0.002)):
        assert mean_dice([("c", *box, 0.001)], cleanup) == mean_dice([("c", predicted, truth, 0.001)], cleanup)
    assert tumor_box(np.zeros((3, 3, 3)), np.zeros((3, 3, 3)))[0].shape == (1, 1, 1)

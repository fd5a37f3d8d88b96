"""The official BraTS 2023 glioma lesion-wise Dice (Training.metrics.official_lesion_dice) on small synthetic masks
whose answer is known by hand."""

import numpy as np
import pytest

from Training.metrics import official_lesion_dice


def cube(shape, corner, side):
    mask = np.zeros(shape, bool)
    mask[tuple(slice(c, c + side) for c in corner)] = True
    return mask


SHAPE = (40, 40, 40)


def test_identical_masks_score_one_and_empty_masks_score_one():
    truth = cube(SHAPE, (5, 5, 5), 6)
    assert official_lesion_dice(truth, truth) == pytest.approx(1.0)
    assert official_lesion_dice(np.zeros(SHAPE, bool), np.zeros(SHAPE, bool)) == 1.0


def test_a_false_positive_island_counts_zero_however_small():
    truth = cube(SHAPE, (5, 5, 5), 6)  # 216 voxels
    pred = truth | cube(SHAPE, (30, 30, 30), 1)  # one voxel far away
    assert official_lesion_dice(pred, truth) == pytest.approx(0.5)  # (1 + 0) / 2


def test_ground_truth_lesions_of_50_voxels_or_less_are_not_scored():
    truth = cube(SHAPE, (5, 5, 5), 6) | cube(SHAPE, (30, 30, 30), 3)  # 216 and 27 voxels
    pred = cube(SHAPE, (5, 5, 5), 6)  # the small one missed: not counted
    assert official_lesion_dice(pred, truth) == pytest.approx(1.0)
    # a prediction on the small lesion is not a false positive either
    assert official_lesion_dice(pred | cube(SHAPE, (30, 30, 30), 3), truth) == pytest.approx(1.0)


def test_fragments_within_the_dilation_are_one_lesion_and_predictions_reaching_it_count():
    truth = cube(SHAPE, (5, 5, 5), 5) | cube(SHAPE, (5, 5, 12), 5)  # 2 voxels apart: one lesion of 250 voxels
    pred = cube(SHAPE, (5, 5, 5), 5)  # one fragment found: Dice 2 * 125 / (125 + 250)
    assert official_lesion_dice(pred, truth) == pytest.approx(2 * 125 / 375)
    near_miss = cube(SHAPE, (5, 5, 19), 3)  # 2 voxels off the lesion, within its 3-fold dilation: not a false positive
    assert official_lesion_dice(pred | near_miss, truth) == pytest.approx(2 * 125 / (125 + 27 + 250))


def test_a_missed_lesion_scores_zero_and_spacing_sets_the_size_limit():
    truth = cube(SHAPE, (5, 5, 5), 6) | cube(SHAPE, (25, 25, 25), 4)  # 216 and 64 voxels
    pred = cube(SHAPE, (5, 5, 5), 6)
    assert official_lesion_dice(pred, truth) == pytest.approx(0.5)  # 64 voxels > 50 mm3 at 1 mm: scored, missed
    assert official_lesion_dice(pred, truth, spacing=(0.5, 0.5, 0.5)) == pytest.approx(1.0)  # 8 mm3: not scored

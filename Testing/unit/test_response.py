"""A follow-up compared with its baseline (measurements.response) on synthetic label maps: lesions matched through a
rigid motion, new and vanished lesions, the bidimensional and volumetric RANO categories and their thresholds, the
imaging-only caveat (geometry and edge cases only: no model)."""

import numpy as np
import pytest
import SimpleITK as sitk

from BrainTumorFusionLib.measurements.rano import measure
from BrainTumorFusionLib.measurements.response import CAVEAT, COMPLETE, CONFIRM, PARTIAL, PROGRESSION, STABLE, compare
from Testing.lesion_shapes import ellipsoid, grid, moved_labels, rigid, rotation, sitk_rigid, tumour

SHAPE = (48, 72, 88)
BASE = grid(origin=(-44.0, -36.0, -24.0))  # 1 mm
# RAS centres and enhancing semi-axes (mm): a large tumour with a necrotic core, a medium one, one too small to measure
TUMOURS = [((-18.3, 4.4, 0.2), (13.0, 9.0, 8.0), 0.4), ((22.6, -10.3, 6.4), (8.0, 6.5, 6.0), 0.0),
           ((20.2, 19.7, -7.6), (3.0, 3.0, 3.0), 0.0)]
FAR_AWAY = (-25.0, -27.0, 14.0)  # RAS: more than 10 mm from every tumour and its edema

# The moved copy of the baseline, measured on 40 random motions (5-15 degrees, up to 8 mm, the follow-up grid turned
# 15-35 degrees in-plane and shifted by part of a voxel): SPD +0.1 % to +6.7 % (a rotated grid's staircase outline
# reads up to a voxel longer), ET volume -0.5 % to +0.7 %, WT volume within 0.2 %. Tolerances with some margin:
MOVED_SPD = 0.10
MOVED_VOLUME = 0.01


def baseline_labels(tumours=TUMOURS) -> np.ndarray:
    labels = np.zeros(SHAPE, np.uint8)
    for centre, semi, core in tumours:
        tumour(labels, BASE, centre, semi, core=core, edema=1.5 if max(semi) > 5 else 1.0)
    return labels


@pytest.fixture(scope="module")
def baseline():
    return measure(baseline_labels(), BASE)


def with_lesion(labels, centre, radius_mm, matrix=BASE):
    labels = labels.copy()
    labels[ellipsoid(labels.shape, matrix, centre, (radius_mm,) * 3)] = 4
    return labels


def test_the_baseline_is_what_was_drawn(baseline):
    assert len(baseline.lesions) == 3 and baseline.measurable_count == 2 and len(baseline.targets) == 2
    assert baseline.lesions[0].longest_mm == pytest.approx(26.0, abs=1.0)
    assert baseline.lesions[0].perpendicular_mm == pytest.approx(18.0, abs=1.0)
    assert not baseline.lesions[2].measurable


@pytest.mark.parametrize("transform", [None, sitk.Transform(), sitk.Euler3DTransform()],
                         ids=["none", "identity", "euler-identity"])
def test_a_case_compared_with_itself_is_stable(baseline, transform):
    comparison = compare(baseline, baseline, transform)
    assert comparison.matches == ((1, 1), (2, 2), (3, 3))
    assert comparison.new_lesions == () and comparison.vanished_lesions == ()
    assert comparison.category == STABLE and comparison.volumetric_category == STABLE
    changes = comparison.changes()
    assert all(change["change"] == 0 and change["relative"] == 0 for change in changes.values())
    assert comparison.label() == f"stable disease ({CAVEAT})"


def moved_follow_up(turn, shift, grid_degrees, subvoxel, shape=(60, 96, 110)):
    """The baseline's label map after the head moved by the rigid motion (turn about the grid's centre, then shift),
    seen on a follow-up grid that moved with the head, turned in-plane by `grid_degrees` and shifted by `subvoxel`
    (voxels): labels resampled with nearest neighbour. (labels, their IJK-to-RAS, the SimpleITK transform from a
    baseline point to the follow-up)."""
    centre = (BASE @ np.r_[(np.array(SHAPE[::-1]) - 1) / 2, 1.0])[:3]
    motion = rigid(turn, centre + np.asarray(shift) - turn @ centre)
    columns = motion[:3, :3] @ BASE[:3, :3] @ rotation((0, 0, 1), grid_degrees)
    matrix = np.eye(4)
    matrix[:3, :3] = columns
    matrix[:3, 3] = (motion @ np.r_[centre, 1.0])[:3] + columns @ (np.asarray(subvoxel) - (np.array(shape[::-1]) - 1) / 2)
    transform = sitk_rigid(turn, shift, centre)
    return moved_labels(baseline_labels(), BASE, transform, shape, matrix), matrix, transform


@pytest.mark.parametrize("turn, shift, grid_degrees, subvoxel", [
    (rotation((1.0, -0.5, 0.3), 12), (9.0, -7.0, 6.0), 25, (0.3, -0.4, 0.2)),
    (rotation((-0.2, 1.0, 0.6), 8), (-6.0, 8.0, -9.0), -30, (-0.2, 0.45, -0.3)),
])
def test_a_rigidly_moved_copy_is_stable(baseline, turn, shift, grid_degrees, subvoxel):
    labels, matrix, transform = moved_follow_up(turn, shift, grid_degrees, subvoxel)
    follow_up = measure(labels, matrix)
    comparison = compare(baseline, follow_up, transform)
    assert comparison.matches == ((1, 1), (2, 2), (3, 3))
    assert comparison.new_lesions == () and comparison.vanished_lesions == ()
    changes = comparison.changes()
    assert abs(changes["spd_mm2"]["relative"]) <= MOVED_SPD
    for region in ("ET", "TC", "WT"):
        assert abs(changes[f"{region}_ml"]["relative"]) <= MOVED_VOLUME
    for before, after in zip(baseline.lesions, follow_up.lesions):  # each diameter within a voxel and a half
        assert after.longest_mm == pytest.approx(before.longest_mm, abs=1.5)
        assert after.perpendicular_mm == pytest.approx(before.perpendicular_mm, abs=1.5)
    assert comparison.category == STABLE and comparison.volumetric_category == STABLE
    # Without the transform the small lesion, moved 13 mm away, is not found where it was.
    assert 3 in compare(baseline, follow_up).vanished_lesions


def test_enhancing_tumor_gone_is_complete_response_with_the_caveat(baseline):
    labels = baseline_labels()
    labels[labels == 4] = 1  # what enhanced is now necrosis
    comparison = compare(baseline, measure(labels, BASE))
    assert comparison.category == COMPLETE and comparison.volumetric_category == COMPLETE
    assert comparison.vanished_lesions == (1, 2, 3) and comparison.matches == ()
    assert "every enhancing lesion of the baseline is gone" in comparison.reasons
    assert "imaging only: clinical criteria (steroids, clinical status) not assessed" in comparison.label()
    assert comparison.label() == f"complete response ({CAVEAT}; {CONFIRM})"
    record = comparison.as_json()
    assert record["caveat"] == CAVEAT and record["category_label"] == comparison.label()
    assert CAVEAT in record["volumetric_category_label"]
    assert comparison.changes()["ET_ml"]["follow_up"] == 0.0


FINE = grid(spacing=(0.5, 0.5, 2.0), origin=(-20.0, -15.0, -12.0))
FINE_SHAPE = (12, 60, 80)


def one_lesion(scale):
    """An ellipsoid of in-plane diameters (30, 20) mm times `scale` on a fine grid."""
    labels = np.zeros(FINE_SHAPE, np.uint8)
    semi = (15.0 * scale, 10.0 * scale, 8.0)
    labels[ellipsoid(FINE_SHAPE, FINE, (0.3, 0.15, -0.7), semi)] = 4
    return measure(labels, FINE)


@pytest.mark.parametrize("spd_change, category, volumetric", [
    (+0.30, PROGRESSION, STABLE),  # volume +30 %: under +40 %
    (-0.60, PARTIAL, STABLE),  # volume -60 %: not yet -65 %
])
def test_spd_change_gives_the_bidimensional_category(spd_change, category, volumetric):
    baseline = one_lesion(1.0)
    follow_up = one_lesion(np.sqrt(1 + spd_change))  # both diameters scaled: the product by 1 + spd_change
    comparison = compare(baseline, follow_up)
    assert comparison.matches == ((1, 1),)
    changes = comparison.changes()
    assert changes["spd_mm2"]["relative"] == pytest.approx(spd_change, abs=0.03)
    assert changes["ET_ml"]["relative"] == pytest.approx(spd_change, abs=0.02)
    assert comparison.category == category and comparison.volumetric_category == volumetric
    assert comparison.reasons[0].startswith(f"SPD {baseline.spd_mm2:g} -> {follow_up.spd_mm2:g} mm2")
    assert CAVEAT in comparison.label() and (CONFIRM in comparison.label()) is (category == PARTIAL)


@pytest.mark.parametrize("diameters, category", [
    ((37.5, 20.0), PROGRESSION),  # +25 %
    ((37.4, 20.0), STABLE),  # +24.7 %
    ((20.0, 15.0), PARTIAL),  # -50 %
    ((20.0, 15.1), STABLE),  # -49.7 %
])
def test_spd_thresholds(diameters, category):
    """A reader's diameters (with_diameters) give exact products: 600 mm2 at baseline."""
    measured = one_lesion(1.0)
    baseline = measured.with_diameters(1, 30.0, 20.0)
    comparison = compare(baseline, measured.with_diameters(1, *diameters))
    assert baseline.spd_mm2 == 600.0
    assert comparison.category == category and comparison.volumetric_category == STABLE


def test_a_new_measurable_lesion_far_away_is_progression(baseline):
    follow_up = measure(with_lesion(baseline_labels(), FAR_AWAY, 5.5), BASE)
    comparison = compare(baseline, follow_up)
    (new,) = comparison.new_lesions
    assert follow_up.lesions[new - 1].measurable and comparison.new_measurable_lesions == (new,)
    assert len(comparison.matches) == 3 and comparison.vanished_lesions == ()
    assert comparison.changes()["spd_mm2"]["relative"] < 0.25  # the SPD alone would not say progression
    assert comparison.category == PROGRESSION and comparison.volumetric_category == PROGRESSION
    assert comparison.reasons[0] == f"new measurable lesion {new} on the follow-up"
    assert comparison.as_json()["new_measurable_lesions"] == [new]


def test_a_new_lesion_too_small_to_measure_is_listed_but_not_progression(baseline):
    follow_up = measure(with_lesion(baseline_labels(), FAR_AWAY, 3.0), BASE)
    comparison = compare(baseline, follow_up)
    (new,) = comparison.new_lesions
    assert not follow_up.lesions[new - 1].measurable and comparison.new_measurable_lesions == ()
    assert comparison.category == STABLE and comparison.volumetric_category == STABLE


def test_a_lesion_gone_is_listed_as_vanished(baseline):
    follow_up = measure(baseline_labels([TUMOURS[0], TUMOURS[2]]), BASE)
    comparison = compare(baseline, follow_up)
    assert comparison.vanished_lesions == (2,) and comparison.new_lesions == ()
    assert comparison.matches == ((1, 1), (3, 2))
    assert comparison.category != COMPLETE and comparison.volumetric_category != COMPLETE
    assert comparison.changes()["spd_mm2"]["relative"] < 0


def boxes(height, side=10, start=5):
    """An enhancing box of side x side voxels, `height` slices (1 mm voxels)."""
    labels = np.zeros((40, 30, 30), np.uint8)
    labels[start:start + height, start:start + side, start:start + side] = 4
    return measure(labels, np.eye(4))


@pytest.mark.parametrize("height, volumetric", [
    (7, PARTIAL),  # 2.0 -> 0.7 mL: -65 %
    (8, STABLE),  # -60 %
    (27, STABLE),  # +35 %
    (28, PROGRESSION),  # 2.0 -> 2.8 mL: +40 %
])
def test_volumetric_thresholds(height, volumetric):
    baseline, follow_up = boxes(20), boxes(height)  # 10 x 10 voxels, 20 slices: 2 mL
    comparison = compare(baseline, follow_up)
    assert baseline.volumes_ml["ET"] == 2.0 and follow_up.volumes_ml["ET"] == pytest.approx(height * 0.1)
    assert comparison.volumetric_category == volumetric
    assert comparison.category == STABLE  # the same slices: the same SPD
    assert comparison.reasons[-1].startswith("volumetric: enhancing volume 2 -> ")


@pytest.mark.parametrize("height, volumetric", [(15, STABLE), (16, PROGRESSION)])
def test_a_baseline_under_1_ml_is_judged_by_the_follow_up_volume(height, volumetric):
    baseline, follow_up = boxes(8, side=8), boxes(height, side=8)  # 0.512 mL, then 0.96 or 1.024 mL
    comparison = compare(baseline, follow_up)
    assert baseline.volumes_ml["ET"] == 0.512
    assert comparison.volumetric_category == volumetric and comparison.category == STABLE
    assert "volumetric: the baseline's enhancing volume (0.512 mL) is below 1 mL" in comparison.reasons[-1]


SMALL = (-5.3, 2.6, 1.2)


def test_a_baseline_without_measurable_disease():
    baseline = measure(with_lesion(np.zeros(SHAPE, np.uint8), SMALL, 3.5), BASE)  # 7 mm
    assert len(baseline.lesions) == 1 and baseline.spd_mm2 == 0.0

    same = compare(baseline, baseline)
    assert same.category == STABLE and same.volumetric_category == STABLE
    assert "no measurable enhancing disease on the baseline: the SPD cannot show a response" in same.reasons
    assert same.changes()["spd_mm2"]["relative"] is None

    grown = compare(baseline, measure(with_lesion(np.zeros(SHAPE, np.uint8), SMALL, 8.0), BASE))
    assert grown.matches == ((1, 1),) and grown.new_lesions == ()
    assert grown.category == PROGRESSION and grown.volumetric_category == PROGRESSION
    assert "measurable enhancing disease appeared where the baseline had none" in grown.reasons


def test_no_enhancing_tumor_at_baseline():
    labels = np.zeros(SHAPE, np.uint8)
    labels[ellipsoid(SHAPE, BASE, SMALL, (10.0, 10.0, 10.0))] = 2  # edema only
    baseline = measure(labels, BASE)
    assert baseline.lesions == ()

    nothing = compare(baseline, baseline)
    assert nothing.matches == nothing.new_lesions == nothing.vanished_lesions == ()
    assert nothing.category == STABLE and nothing.volumetric_category == STABLE
    assert nothing.changes()["ET_ml"]["relative"] is None

    appeared = compare(baseline, measure(with_lesion(labels, SMALL, 8.0), BASE))
    assert appeared.new_lesions == (1,) and appeared.new_measurable_lesions == (1,)
    assert appeared.category == PROGRESSION and appeared.volumetric_category == PROGRESSION

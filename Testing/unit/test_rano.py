"""RANO measurements of one exam (measurements.lesions, measurements.rano, measurements.regions) on synthetic label
maps: diameters of ellipsoids of known size on any grid, connectivity, measurability, targets, thin rims, readers'
corrections and region volumes (geometry and edge cases only: no model)."""

import numpy as np
import pytest

from BrainTumorFusionLib.measurements.lesions import axial_axis, slice_thickness_mm
from BrainTumorFusionLib.measurements.rano import measurable_mm, measure
from BrainTumorFusionLib.measurements.regions import REGIONS, region_volumes
from Testing.lesion_shapes import (
    ellipse_volume_ml,
    ellipsoid,
    grid,
    grid_ellipsoid,
    ras_to_ijk,
    rigid,
    rotation,
)

# name -> grid(...) keywords. The lesion's axes lie along the grid's in-plane directions and its slice normal.
GRIDS = {
    "isotropic": dict(spacing=(1.0, 1.0, 1.0)),
    "anisotropic": dict(spacing=(0.8, 1.1, 3.0)),
    "oblique": dict(spacing=(0.9, 1.0, 1.5), turn=rotation((1.0, 0.6, 0.2), 25)),
    "left-handed": dict(spacing=(1.0, 0.9, 2.0), turn=rotation((0.3, 1.0, 0.0), 20), negate=0),
    "descending-slices": dict(spacing=(1.0, 1.0, 2.0), negate=2),  # left-handed too: K runs inferior
    "5mm-slices": dict(spacing=(0.9, 0.9, 5.0)),
    # a coronal series: J is superior, so its axial slices run across the array's J axis, not K
    "coronal": dict(spacing=(0.9, 2.0, 1.2), turn=[[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]]),
}
SEMI_IN_PLANE = (13.0, 8.5)  # mm: diameters 26 and 17
VOLUME_TOLERANCE = 0.03  # largest seen over 40 random centres per grid: 1.5 % (anisotropic)


def single_ellipsoid(matrix, semi_axes, seed, margin=4):
    """Labels with one enhancing ellipsoid (axes along i, j, k) centred half-way in its grid plus a random
    sub-voxel offset, and that centre (continuous i, j, k)."""
    spacing = np.linalg.norm(matrix[:3, :3], axis=0)
    shape = tuple(int(np.ceil(2 * semi_axes[a] / spacing[a])) + 2 * margin for a in (2, 1, 0))
    centre = np.array([(shape[2 - a] - 1) / 2 for a in range(3)])
    centre += np.random.default_rng(seed).uniform(-0.5, 0.5, 3)
    labels = np.where(grid_ellipsoid(shape, matrix, centre, semi_axes), 4, 0).astype(np.uint8)
    return labels, centre


def ellipse_crossings(line, centre, axes, semi_axes) -> np.ndarray:
    """Where the straight line through `line`'s two points crosses an ellipse (centre, unit axes and semi-axes in
    its plane), in the order of the line's points."""
    start, end = np.asarray(line, dtype=float)
    direction = (end - start) / np.linalg.norm(end - start)
    p = np.array([(start - centre) @ axis / r for axis, r in zip(axes, semi_axes)])
    d = np.array([direction @ axis / r for axis, r in zip(axes, semi_axes)])
    a, b, c = d @ d, 2 * p @ d, p @ p - 1  # |p + t d|^2 = 1
    roots = (-b + np.array([-1.0, 1.0]) * np.sqrt(b * b - 4 * a * c)) / (2 * a)
    return start + roots[:, None] * direction


@pytest.mark.parametrize("major", [0, 1], ids=["major-first-axis", "major-second-axis"])
@pytest.mark.parametrize("name", list(GRIDS))
def test_ellipsoid_diameters_volume_and_lines(name, major):
    matrix = grid(origin=(-30.0, 20.0, -10.0), **GRIDS[name])
    spacing = np.linalg.norm(matrix[:3, :3], axis=0)
    normal = 2 - axial_axis(matrix)  # the slice normal's column (i, j, k)
    in_plane = [a for a in range(3) if a != normal]
    long_axis, short_axis = in_plane if major == 0 else in_plane[::-1]
    semi = np.zeros(3)
    semi[long_axis], semi[short_axis] = SEMI_IN_PLANE
    semi[normal] = 20.0 if spacing[normal] >= 5 else 12.0  # at least 8 slices
    labels, centre = single_ellipsoid(matrix, semi, seed=len(name) + major)
    result = measure(labels, matrix)
    (lesion,) = result.lesions
    assert result.slice_thickness_mm == pytest.approx(spacing[normal], abs=1e-3)
    assert lesion.measurable and lesion.target and not lesion.thin_rim and lesion.note == ""

    # The measured slice cuts the lesion within 5 % of its largest cross-section (products vary by a voxel).
    offset_mm = (lesion.slice_index - centre[normal]) * spacing[normal]
    shrink = np.sqrt(1 - (offset_mm / semi[normal]) ** 2)
    assert shrink**2 >= 0.95
    # Diameters within one in-plane voxel spacing of that cross-section's (an ellipse's) own diameters.
    voxel = spacing[in_plane].max()
    assert lesion.longest_mm == pytest.approx(2 * semi[long_axis] * shrink, abs=voxel)
    assert lesion.perpendicular_mm == pytest.approx(2 * semi[short_axis] * shrink, abs=voxel)
    # Each end within half a voxel of the true margin, along the line.
    slice_centre = centre.copy()
    slice_centre[normal] = lesion.slice_index
    centre_ras = (matrix @ np.r_[slice_centre, 1.0])[:3]
    for line in (lesion.longest_line, lesion.perpendicular_line):
        true_ends = ellipse_crossings(line, centre_ras, [matrix[:3, a] / spacing[a] for a in (long_axis, short_axis)],
                                      [semi[long_axis] * shrink, semi[short_axis] * shrink])
        np.testing.assert_allclose(line, true_ends, atol=voxel / 2 + 0.01)
    assert lesion.volume_ml == pytest.approx(ellipse_volume_ml(semi), rel=VOLUME_TOLERANCE)
    assert lesion.volume_ml == pytest.approx(np.count_nonzero(labels) * np.prod(spacing) / 1000, abs=1e-4)
    np.testing.assert_allclose(lesion.centroid_ras, (matrix @ np.r_[centre, 1.0])[:3], atol=spacing.max() / 4)

    # The lines are the diameters: their lengths, perpendicular, and all four ends on the measured axial slice.
    longest, perpendicular = np.diff(lesion.longest_line, axis=0)[0], np.diff(lesion.perpendicular_line, axis=0)[0]
    assert np.linalg.norm(longest) == pytest.approx(lesion.longest_mm, abs=0.01)
    assert np.linalg.norm(perpendicular) == pytest.approx(lesion.perpendicular_mm, abs=0.01)
    assert abs(longest @ perpendicular) / (lesion.longest_mm * lesion.perpendicular_mm) < 1e-3
    ends = ras_to_ijk(matrix, [*lesion.longest_line, *lesion.perpendicular_line])
    np.testing.assert_allclose(ends[:, normal], lesion.slice_index, atol=0.01)


@pytest.mark.parametrize("seed", [0, 7])
@pytest.mark.parametrize("name", ["anisotropic", "oblique", "left-handed", "5mm-slices"])
def test_a_rigidly_moved_grid_gives_the_same_diameters(name, seed):
    """Only the IJK-to-RAS matrix changes (the patient moved with the scanner's grid): the same voxels give the same
    diameters, and the lines move with the patient."""
    matrix = grid(origin=(-30.0, 20.0, -10.0), **GRIDS[name])
    labels, _ = single_ellipsoid(matrix, (12.0, 9.0, 11.0), seed=seed)
    labels[:, :, : labels.shape[2] // 3] = 0  # not symmetric: one side cut flat
    motion = rigid(rotation((0.4, -1.0, 0.3), 12), (7.5, -12.0, 4.0))
    before, after = measure(labels, matrix).lesions[0], measure(labels, motion @ matrix).lesions[0]
    assert after.slice_index == before.slice_index
    assert after.volume_ml == pytest.approx(before.volume_ml, abs=2e-4)  # the voxel volume's last bit may round
    assert (after.longest_mm, after.perpendicular_mm) == (before.longest_mm, before.perpendicular_mm)
    # The lines, brought back with the patient, lie across the lesion on the same slice. They may differ where lines
    # are equally long (a pixelated outline's mirror images, a plateau of equal chords).
    back = np.linalg.inv(motion)
    for line, length in ((after.longest_line, after.longest_mm), (after.perpendicular_line, after.perpendicular_mm)):
        returned = (back @ np.c_[np.array(line), np.ones(2)].T).T[:, :3]
        assert np.linalg.norm(returned[1] - returned[0]) == pytest.approx(length, abs=0.01)
        np.testing.assert_allclose(ras_to_ijk(matrix, returned)[:, 2], before.slice_index, atol=0.01)
        middle = np.round(ras_to_ijk(matrix, returned.mean(axis=0))[0]).astype(int)
        assert labels[middle[2], middle[1], middle[0]] == 4
    np.testing.assert_allclose((motion @ np.r_[before.centroid_ras, 1.0])[:3], after.centroid_ras, atol=0.01)


@pytest.mark.parametrize("axis", [1, 2], ids=["rows-reversed", "columns-reversed"])
def test_the_same_voxels_stored_in_reverse_order_give_the_same_diameters(axis):
    """A series stored the other way round (an array axis reversed, its matrix column negated): the same lesion."""
    matrix = grid(origin=(-30.0, 20.0, -10.0), **GRIDS["oblique"])
    labels, _ = single_ellipsoid(matrix, (12.0, 9.0, 11.0), seed=7)
    reversed_matrix = matrix.copy()
    reversed_matrix[:3, 2 - axis] *= -1
    reversed_matrix[:3, 3] += (labels.shape[axis] - 1) * matrix[:3, 2 - axis]
    before = measure(labels, matrix).lesions[0]
    after = measure(np.flip(labels, axis=axis), reversed_matrix).lesions[0]
    assert (after.slice_index, after.longest_mm, after.perpendicular_mm, after.volume_ml) == (
        before.slice_index, before.longest_mm, before.perpendicular_mm, before.volume_ml)
    np.testing.assert_allclose(after.centroid_ras, before.centroid_ras, atol=0.002)


CUBE = (slice(2, 6), slice(2, 6), slice(2, 6))


@pytest.mark.parametrize("second, count", [
    ((slice(2, 6), slice(2, 6), slice(6, 10)), 1),  # sharing a face
    ((slice(6, 10), slice(2, 6), slice(6, 10)), 1),  # sharing an edge
    ((slice(6, 10), slice(6, 10), slice(6, 10)), 1),  # touching at a corner only
    ((slice(2, 6), slice(2, 6), slice(7, 11)), 2),  # one empty voxel between
    ((slice(7, 11), slice(7, 11), slice(7, 11)), 2),  # one empty voxel diagonally
], ids=["face", "edge", "corner", "gap", "diagonal-gap"])
def test_touching_lesions_are_one_lesion(second, count):
    labels = np.zeros((12, 12, 12), np.uint8)
    labels[CUBE] = 4
    labels[second] = 4
    result = measure(labels, np.eye(4))
    assert len(result.lesions) == count
    assert sum(lesion.volume_ml for lesion in result.lesions) == pytest.approx(0.128)
    assert result.components.max() == count and np.count_nonzero(result.components) == 128
    if count == 1 and second[0] == CUBE[0]:  # side by side on the same axial slices: measured across both
        assert result.lesions[0].longest_mm >= 8.0


def test_measurable_threshold_by_slice_thickness():
    assert [measurable_mm(t) for t in (1.0, 3.0, 5.0, 5.5, 6.0, 8.0)] == [10.0, 10.0, 10.0, 11.0, 12.0, 16.0]


@pytest.mark.parametrize("thickness, diameter, threshold", [
    (1.0, 9.5, 10.0), (1.0, 10.5, 10.0),
    (5.0, 9.5, 10.0), (5.0, 10.5, 10.0),
    (6.0, 11.5, 12.0), (6.0, 12.5, 12.0),
])
def test_a_lesion_just_under_the_threshold_is_not_measurable(thickness, diameter, threshold):
    """A 20 mm x `diameter` ellipse on 0.25 mm pixels, centred on a slice: measured within half a millimetre."""
    matrix = grid(spacing=(0.25, 0.25, thickness), origin=(5.0, -7.0, 3.0))
    semi = (10.0, diameter / 2, 2 * thickness)
    labels, centre = single_ellipsoid(matrix, semi, seed=int(diameter * 10), margin=3)
    centre[2] = round(centre[2])
    labels = np.where(grid_ellipsoid(labels.shape, matrix, centre, semi), 4, 0).astype(np.uint8)
    result = measure(labels, matrix)
    (lesion,) = result.lesions
    assert result.measurable_mm == threshold and lesion.slice_index == centre[2]
    assert lesion.perpendicular_mm == pytest.approx(diameter, abs=0.25)
    assert lesion.longest_mm == pytest.approx(20.0, abs=0.25)
    measurable = diameter > threshold
    assert lesion.measurable is measurable and lesion.target is measurable
    assert lesion.note == ("" if measurable else f"not measurable: a diameter under {threshold:g} mm")
    assert result.spd_mm2 == (lesion.product_mm2 if measurable else 0.0)


def five_lesions():
    """Five measurable lesions on a 1 mm grid: in-plane diameters (mm) and half-height along S. The last has the
    smallest product but, tall, the second largest volume."""
    shape, matrix = (44, 64, 150), grid(origin=(-75.0, -30.0, -20.0))
    sizes = [((30, 24), 5), ((26, 20), 5), ((22, 18), 5), ((18, 14), 5), ((14, 12), 20)]
    labels = np.zeros(shape, np.uint8)
    for index, (diameters, half_height) in enumerate(sizes):
        centre = (-60.0 + 30 * index + 0.3, 2.2, 1.6)
        labels[ellipsoid(shape, matrix, centre, (diameters[0] / 2, diameters[1] / 2, half_height))] = 4
    return labels, matrix


def test_only_the_three_largest_products_are_targets():
    result = measure(*five_lesions())
    lesions = result.lesions
    assert len(lesions) == 5 and result.measurable_count == 5
    assert [lesion.number for lesion in lesions] == [1, 2, 3, 4, 5]
    volumes = [lesion.volume_ml for lesion in lesions]
    assert volumes == sorted(volumes, reverse=True)
    by_product = sorted(lesions, key=lambda lesion: -lesion.product_mm2)
    assert {lesion.number for lesion in result.targets} == {lesion.number for lesion in by_product[:3]}
    tall = min(lesions, key=lambda lesion: lesion.product_mm2)
    assert tall.number == 2 and not tall.target  # second by volume, last by product
    assert result.spd_mm2 == pytest.approx(sum(lesion.product_mm2 for lesion in by_product[:3]), abs=0.051)
    assert result.spd_mm2 == pytest.approx(720 + 520 + 396, rel=0.08)
    summary = result.as_json()
    assert (summary["lesion_count"], summary["measurable_count"], summary["target_count"]) == (5, 5, 3)
    assert summary["spd_mm2"] == result.spd_mm2
    assert [entry["target"] for entry in summary["lesions"]] == [lesion.target for lesion in lesions]


def test_no_measurable_lesion_gives_spd_zero():
    labels = np.zeros((30, 30, 60), np.uint8)
    labels[ellipsoid(labels.shape, np.eye(4), (10, 12, 15), (4, 4, 4))] = 4  # 8 mm across
    labels[15, 15, 40] = 4  # one voxel
    labels[15, 10, 45:55] = 4  # one voxel thick
    result = measure(labels, np.eye(4))
    assert len(result.lesions) == 3 and result.measurable_count == 0
    assert result.targets == () and result.spd_mm2 == 0.0
    assert all(lesion.note == "not measurable: a diameter under 10 mm" for lesion in result.lesions)
    single = min(result.lesions, key=lambda lesion: lesion.volume_ml)
    assert single.volume_ml == 0.001 and single.longest_mm == pytest.approx(1.0, abs=0.5)


def test_no_enhancing_voxel_gives_no_lesion():
    labels = np.zeros((10, 10, 10), np.uint8)
    labels[2:8, 2:8, 2:8] = 2
    labels[4:6, 4:6, 4:6] = 1
    result = measure(labels, np.eye(4))
    assert result.lesions == () and result.spd_mm2 == 0.0 and not result.components.any()
    assert result.volumes_ml["ET"] == 0.0 and result.volumes_ml["WT"] == 0.216
    assert measure(np.zeros((4, 4, 4), np.uint8), np.eye(4)).lesions == ()


def sphere_case(inner_mm):
    """Enhancing sphere of radius 15 mm around a necrotic sphere of radius `inner_mm` (0: solid)."""
    shape = (36, 36, 36)
    labels = np.zeros(shape, np.uint8)
    centre = (17.3, 17.6, 17.2)
    labels[ellipsoid(shape, np.eye(4), centre, (15.0,) * 3)] = 4
    if inner_mm:
        labels[ellipsoid(shape, np.eye(4), centre, (inner_mm,) * 3)] = 1
    return measure(labels, np.eye(4))


def test_a_thin_rim_around_necrosis_is_flagged():
    (lesion,) = sphere_case(12.0).lesions  # 3 mm wall
    assert lesion.thin_rim and lesion.measurable and lesion.target
    assert lesion.note.startswith("thin enhancing rim (thickest wall ")
    wall = float(lesion.note.split("thickest wall ")[1].split(" mm")[0])
    assert 2.0 <= wall <= 4.5
    assert lesion.longest_mm == pytest.approx(30.0, abs=1.0)  # measured across the outline, cavity included
    assert lesion.thickest_wall_mm == wall
    # A reader's correction that makes it unmeasurable and back again brings the flag's note back.
    result = sphere_case(12.0)
    corrected = result.with_diameters(1, 8.0, 8.0).with_diameters(1, 30.0, 30.0).lesions[0]
    assert corrected.measurable and corrected.note == lesion.note


@pytest.mark.parametrize("inner_mm", [0.0, 5.0], ids=["solid", "small-core"])
def test_a_solid_lesion_is_not_a_thin_rim(inner_mm):
    (lesion,) = sphere_case(inner_mm).lesions
    assert not lesion.thin_rim and lesion.note == "" and lesion.measurable


def test_with_diameters_updates_product_spd_measurability_and_targets():
    result = measure(*five_lesions())
    by_product = sorted(result.lesions, key=lambda lesion: -lesion.product_mm2)
    first, third, fourth = by_product[0].number, by_product[2].number, by_product[3].number
    spd = result.spd_mm2

    grown = result.with_diameters(fourth, 40.0, 30.0)
    lesion = grown.lesions[fourth - 1]
    assert (lesion.longest_mm, lesion.perpendicular_mm, lesion.product_mm2) == (40.0, 30.0, 1200.0)
    assert lesion.target and not grown.lesions[third - 1].target
    assert grown.spd_mm2 == pytest.approx(spd - by_product[2].product_mm2 + 1200.0, abs=0.051)
    assert result.spd_mm2 == spd and not result.lesions[fourth - 1].target  # the original is unchanged

    shrunk = result.with_diameters(first, 9.0, 8.0)
    lesion = shrunk.lesions[first - 1]
    assert not lesion.measurable and not lesion.target and lesion.product_mm2 == 72.0
    assert lesion.note == "not measurable: a diameter under 10 mm"
    assert shrunk.measurable_count == 4 and shrunk.lesions[fourth - 1].target
    assert shrunk.spd_mm2 == pytest.approx(sum(lesion.product_mm2 for lesion in by_product[1:4]), abs=0.051)

    restored = shrunk.with_diameters(first, 31.256, 25.0)
    lesion = restored.lesions[first - 1]
    assert lesion.measurable and lesion.target and lesion.note == "" and lesion.longest_mm == 31.26
    assert not restored.lesions[fourth - 1].target
    assert restored.components is result.components  # the voxels stay for matching


def test_region_volumes_match_voxel_counts():
    rng = np.random.default_rng(7)
    labels = rng.choice(np.array([0, 1, 2, 4], np.uint8), size=(9, 11, 13), p=[0.4, 0.1, 0.3, 0.2])
    matrix = grid(spacing=(0.8, 1.1, 3.0), turn=rotation((1, 1, 0), 30), negate=1)
    voxel_ml = 0.8 * 1.1 * 3.0 / 1000
    counts = {value: int(np.count_nonzero(labels == value)) for value in (1, 2, 4)}
    expected = {"NCR": counts[1], "ED": counts[2], "ET": counts[4], "TC": counts[1] + counts[4],
                "WT": counts[1] + counts[2] + counts[4]}
    result = measure(labels, matrix)
    assert tuple(result.volumes_ml) == REGIONS
    for region, count in expected.items():
        assert result.volumes_ml[region] == pytest.approx(count * voxel_ml, abs=5e-4)
    assert region_volumes(labels, voxel_ml) == result.volumes_ml
    assert sum(lesion.volume_ml for lesion in result.lesions) == pytest.approx(counts[4] * voxel_ml, abs=1e-3)
    assert slice_thickness_mm(matrix) == pytest.approx(3.0)

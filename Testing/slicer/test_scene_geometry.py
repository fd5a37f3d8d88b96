"""Geometry round trips through a real headless MRML scene, compared in physical (RAS) space.

volume node -> (array, IJK-to-RAS) -> Result -> segmentation node -> .seg.nrrd -> loaded back -> exported on
the reference grid -> same labels at the same physical points as the input label map.
"""

import numpy as np
import pytest
import SimpleITK as sitk
import slicer.util

from BrainTumorFusionLib.app.scene import case_from_nodes, volume_from_node, write_segmentation
from BrainTumorFusionLib.case import Result
from BrainTumorFusionLib.files.seg_nrrd import save_seg_nrrd
from BrainTumorFusionLib.modalities import MODALITIES
from BrainTumorFusionLib.preparation.geometry import ijk_to_ras_of

SHAPE = (7, 9, 11)  # K, J, I
SPACING = np.array([0.9, 1.3, 2.5])  # I, J, K: anisotropic
ORIGIN = np.array([-12.5, 30.25, 7.75])


def _rotation(axis, degrees):
    a = np.radians(degrees)
    c, s = np.cos(a), np.sin(a)
    i, j = [(1, 2), (0, 2), (0, 1)][axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


DIRECTIONS = {
    "RAS": np.eye(3),
    "LPS": np.diag([-1.0, -1.0, 1.0]),
    "oblique": _rotation(2, 30) @ _rotation(0, -17) @ _rotation(1, 8),
}


def grid(orientation, handedness):
    """4x4 IJK-to-RAS with the given direction; handedness -1 flips the K axis (determinant -1)."""
    direction = DIRECTIONS[orientation] @ np.diag([1.0, 1.0, float(handedness)])
    matrix = np.eye(4)
    matrix[:3, :3] = direction @ np.diag(SPACING)
    matrix[:3, 3] = ORIGIN
    assert np.sign(np.linalg.det(matrix[:3, :3])) == handedness
    return matrix


def synthetic_labels(shape=SHAPE, seed=0):
    """Asymmetric BraTS label map (no symmetry that a flip could hide)."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(np.array([0, 0, 1, 2, 4], dtype=np.uint8), size=shape)
    labels[0, 0, :] = 4
    labels[-1, :, 0] = 1
    return labels


def result_for(labels, ijk_to_ras, name="case"):
    return Result(case_name=name, labels=labels, ijk_to_ras=ijk_to_ras,
                  volumes_ml={k: 0.0 for k in ("NCR", "ED", "ET", "TC", "WT")})


@pytest.mark.parametrize("handedness", [1, -1])
@pytest.mark.parametrize("orientation", sorted(DIRECTIONS))
def test_round_trip_is_exact_in_physical_space(kit, vtk_messages, tmp_path, orientation, handedness):
    matrix = grid(orientation, handedness)
    image = np.random.default_rng(1).normal(size=SHAPE).astype(np.float32)
    reference = kit.add_volume(image, matrix)

    array, ijk_to_ras = volume_from_node(reference)
    np.testing.assert_array_equal(array, image)
    np.testing.assert_allclose(ijk_to_ras, matrix, atol=1e-9)

    labels = synthetic_labels()
    result = result_for(labels, ijk_to_ras)
    seg_node = write_segmentation(result, reference, kit.scene)
    kit.assert_same_labels_physically(labels, matrix, kit.labels_on(seg_node, reference), matrix)

    path = save_seg_nrrd(result, tmp_path / "case.seg.nrrd")
    loaded = kit.load_seg_nrrd(path)
    kit.assert_same_labels_physically(labels, matrix, kit.labels_on(loaded, reference), matrix)

    # A second library reads the file: same labels at the same physical points (SimpleITK works in LPS).
    from_file = sitk.ReadImage(str(path))
    assert from_file.GetNumberOfComponentsPerPixel() == 1  # one shared layer holding the BraTS values
    kit.assert_same_labels_physically(labels, matrix, sitk.GetArrayFromImage(from_file), ijk_to_ras_of(from_file))
    vtk_messages()


def test_linear_parent_transform_is_applied_and_followed(kit, vtk_messages):
    matrix = grid("oblique", -1)
    reference = kit.add_volume(np.ones(SHAPE, np.float32), matrix)
    transform = kit.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "registration")
    to_world = np.eye(4)
    to_world[:3, :3] = DIRECTIONS["oblique"].T
    to_world[:3, 3] = [5.0, -3.0, 12.0]
    transform.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(to_world))
    reference.SetAndObserveTransformNodeID(transform.GetID())

    _, ijk_to_ras = volume_from_node(reference)
    np.testing.assert_allclose(ijk_to_ras, to_world @ matrix, atol=1e-9)

    labels = synthetic_labels(seed=3)
    seg_node = write_segmentation(result_for(labels, ijk_to_ras), reference, kit.scene)
    assert seg_node.GetParentTransformNode() is transform  # follows later edits of the registration
    kit.assert_same_labels_physically(labels, matrix, kit.labels_on(seg_node, reference), matrix)
    vtk_messages()


def test_real_case_round_trip(kit, vtk_messages, brats_dir, tmp_path):
    case_id = "Brats18_CBICA_ABM_1"
    folder = brats_dir / case_id
    nodes = {m: kit.volumes.AddArchetypeVolume(str(folder / f"{case_id}_{m}.nii.gz"), f"{case_id}_{m}")
             for m in MODALITIES}
    seg_file = folder / f"{case_id}_seg.nii.gz"
    truth_node = kit.volumes.AddArchetypeVolume(str(seg_file), f"{case_id}_seg", 1)
    assert all(nodes.values()) and truth_node is not None

    case = case_from_nodes(**nodes)
    assert case.name == case_id
    assert case.image.shape == (4,) + slicer_shape(nodes["t1"]) and all(case.present)
    assert not case.warnings

    labels, labels_matrix = volume_from_node(truth_node)
    np.testing.assert_allclose(labels_matrix, case.ijk_to_ras, atol=1e-6)
    assert set(np.unique(labels)) <= {0, 1, 2, 4} and (labels > 0).any()
    result = result_for(labels.astype(np.uint8), case.ijk_to_ras, case.name)

    seg_node = write_segmentation(result, nodes["t1"], kit.scene)
    on_reference = kit.labels_on(seg_node, nodes["t1"])
    kit.assert_same_labels_physically(labels, labels_matrix, on_reference, case.ijk_to_ras)

    path = save_seg_nrrd(result, tmp_path / f"{case_id}.seg.nrrd")
    loaded = kit.labels_on(kit.load_seg_nrrd(path), nodes["t1"])
    np.testing.assert_array_equal(loaded, on_reference)  # both on the t1 node's grid in Slicer

    # Against the original file read by SimpleITK, in physical space (never raw arrays across libraries).
    original = sitk.ReadImage(str(seg_file))
    kit.assert_same_labels_physically(loaded, case.ijk_to_ras, sitk.GetArrayFromImage(original),
                                      ijk_to_ras_of(original))
    vtk_messages()


def slicer_shape(node):
    return tuple(reversed(node.GetImageData().GetDimensions()))

"""Registration in a real headless MRML scene: the transform nodes the module adds (LPS -> RAS and Slicer's
transform-to-parent convention), that they move only where the volume shows, that undoing them restores it, and
that a failed registration leaves the scene as it was. Real case, T2 moved by a seeded rigid transform on 1 x 1 x 3 mm
slices (Testing/moved_cases.py)."""

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
import slicer.util
import vtk

from BrainTumorFusionLib.app.logic import SceneLogic
from BrainTumorFusionLib.app.scene import add_registration_transforms, case_from_nodes, volume_from_node
from BrainTumorFusionLib.engine.pipeline import Pipeline
from BrainTumorFusionLib.errors import InputError
from BrainTumorFusionLib.modalities import MODALITIES
from BrainTumorFusionLib.preparation.geometry import resample_onto
from BrainTumorFusionLib.preparation.registration import ras_transform_to_parent
from Testing.moved_cases import moved, random_rigid
from Testing.plumbing import intensity_model

CASE = "Brats18_CBICA_ABM_1"


@pytest.fixture
def scene_case(kit, brats_dir, tmp_path):
    """T1ce as loaded, and T2 moved (written to a file and loaded by Slicer, as a user would)."""
    t2 = sitk.ReadImage(str(brats_dir / CASE / f"{CASE}_t2.nii.gz"))
    path = tmp_path / f"{CASE}_t2.nrrd"
    sitk.WriteImage(moved(t2, random_rigid(np.random.default_rng(5), t2), spacing=(1.0, 1.0, 3.0)), str(path))
    t1ce = kit.volumes.AddArchetypeVolume(str(brats_dir / CASE / f"{CASE}_t1ce.nii.gz"), f"{CASE}_t1ce")
    return {"t1ce": t1ce, "t2": kit.volumes.AddArchetypeVolume(str(path), f"{CASE}_t2")}, t2


def node_geometry(node):
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix).copy(), slicer.util.arrayFromVolume(node).copy()


def shown(node, reference_node):
    """The volume as it shows in the world (its transforms applied), on the reference node's grid."""
    array, world = volume_from_node(node)
    reference, reference_matrix = volume_from_node(reference_node)
    return resample_onto(array, world, reference.shape, reference_matrix)


def brain_correlation(array, image):
    """Correlation over the brain of `image` (SimpleITK, on the same grid as `array`)."""
    truth = sitk.GetArrayFromImage(image).astype(np.float32)
    brain = truth > 0
    return float(np.corrcoef(array[brain], truth[brain])[0, 1])


@pytest.mark.parametrize("user_transform", [False, True], ids=["no-parent", "under-a-user-transform"])
def test_transform_node_puts_the_volume_on_the_reference(kit, scene_case, vtk_messages, user_transform):
    nodes, original_t2 = scene_case
    if user_transform:  # the user had put T2 under a transform: ours goes between, and theirs is kept
        parent = kit.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "user shift")
        shift = np.eye(4)
        shift[:3, 3] = [4.0, -3.0, 2.0]
        parent.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(shift))
        nodes["t2"].SetAndObserveTransformNodeID(parent.GetID())
    before = node_geometry(nodes["t2"])
    unregistered = brain_correlation(shown(nodes["t2"], nodes["t1ce"]), original_t2)
    assert unregistered < 0.5  # moved: it does not fit

    case = case_from_nodes(**nodes, register="on")
    alignment = case.alignments["t2"]
    assert alignment.registered and case.reference_role == "t1ce"
    added = add_registration_transforms(kit.scene, nodes, {"t2": ras_transform_to_parent(alignment.transform)},
                                        "t1ce")

    assert [node.GetName() for node in added] == ["BrainTumorFusion T2 to T1ce"]
    assert nodes["t2"].GetParentTransformNode() is added[0]
    if user_transform:
        assert added[0].GetParentTransformNode().GetName() == "user shift"
    after = node_geometry(nodes["t2"])
    np.testing.assert_array_equal(before[0], after[0])  # the volume's own geometry and voxels are untouched
    np.testing.assert_array_equal(before[1], after[1])
    # Slicer shows T2 exactly where the library's registration (SimpleITK, LPS) resamples it to; so it fits T1ce
    # (against its unmoved self: 0.72 after this registration, 0.90 through the true inverse move, both resampled
    # twice from 3 mm slices).
    on_reference = shown(nodes["t2"], nodes["t1ce"])
    library = case.image[MODALITIES.index("t2")]
    brain = library > 0
    assert np.corrcoef(on_reference[brain], library[brain])[0, 1] > 0.99
    assert brain_correlation(on_reference, original_t2) > unregistered + 0.3
    # Undo: out of the transform (back under the user's, if any), the volume is where it was.
    nodes["t2"].SetAndObserveTransformNodeID(added[0].GetTransformNodeID())
    assert brain_correlation(shown(nodes["t2"], nodes["t1ce"]), original_t2) == pytest.approx(unregistered)
    vtk_messages()


def test_segment_registers_and_adds_the_transform(kit, scene_case):
    nodes, original_t2 = scene_case
    logic = SceneLogic(kit.scene)
    pipeline = Pipeline(device="cpu", segmenter=intensity_model(handles_missing=True))
    segmentation = logic.segment(**nodes, pipeline=pipeline)
    transform = kit.scene.GetFirstNodeByName("BrainTumorFusion T2 to T1ce")
    assert transform is not None and nodes["t2"].GetParentTransformNode() is transform
    assert brain_correlation(shown(nodes["t2"], nodes["t1ce"]), original_t2) > 0.6
    # The result lies on T1ce's grid, which Slicer exports it onto unchanged.
    assert kit.labels_on(segmentation, nodes["t1ce"]).shape == slicer.util.arrayFromVolume(nodes["t1ce"]).shape


def test_a_failed_registration_leaves_the_scene_unchanged(kit, brats_dir, tmp_path):
    t1ce = kit.volumes.AddArchetypeVolume(str(brats_dir / CASE / f"{CASE}_t1ce.nii.gz"), f"{CASE}_t1ce")
    slab = sitk.ReadImage(str(brats_dir / CASE / f"{CASE}_flair.nii.gz"))[:, :, 60:90]
    sitk.WriteImage(slab, str(tmp_path / "slab_flair.nrrd"))
    flair = kit.volumes.AddArchetypeVolume(str(tmp_path / "slab_flair.nrrd"), "slab_flair")
    state, geometry = kit.state(), node_geometry(flair)
    with pytest.raises(InputError, match="FLAIR covers less than half of the T1ce head"):
        SceneLogic(kit.scene).segment(t1ce=t1ce, flair=flair, register="on",
                                      pipeline=Pipeline(device="cpu", segmenter=intensity_model(handles_missing=True)))
    assert kit.state() == state and flair.GetParentTransformNode() is None
    np.testing.assert_array_equal(node_geometry(flair)[0], geometry[0])


def test_a_registration_that_moves_nothing_adds_no_node(kit, brats_dir):
    """A second run on volumes the first registration placed finds (about) the identity: no second node."""
    t1ce = kit.volumes.AddArchetypeVolume(str(brats_dir / CASE / f"{CASE}_t1ce.nii.gz"), f"{CASE}_t1ce")
    t2 = kit.volumes.AddArchetypeVolume(str(brats_dir / CASE / f"{CASE}_t2.nii.gz"), f"{CASE}_t2")
    state = kit.state()
    nearly = np.eye(4)
    nearly[:3, 3] = [0.02, -0.03, 0.01]
    assert add_registration_transforms(kit.scene, {"t1ce": t1ce, "t2": t2}, {"t2": nearly}, "t1ce") == []
    assert kit.state() == state and t2.GetParentTransformNode() is None
    shifted = nearly.copy()
    shifted[0, 3] = 1.0
    assert len(add_registration_transforms(kit.scene, {"t1ce": t1ce, "t2": t2}, {"t2": shifted}, "t1ce")) == 1

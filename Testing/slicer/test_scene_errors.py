"""Bad input and failures: clear InputError/OutputError messages, and the scene left as it was."""

import os

import numpy as np
import pytest
import slicer.util
import vtk

from BrainTumorFusionLib.app.logic import SceneLogic
from BrainTumorFusionLib.app.scene import case_from_nodes, volume_from_node, write_result_to_scene
from BrainTumorFusionLib.case import Result
from BrainTumorFusionLib.errors import InputError, OutputError
from BrainTumorFusionLib.files.seg_nrrd import save_seg_nrrd

SHAPE = (5, 6, 7)
MATRIX = np.diag([1.0, 1.0, 2.0, 1.0])


def result(labels=None, volumes=None):
    labels = np.zeros(SHAPE, np.uint8) if labels is None else labels
    volumes = {k: 1.0 for k in ("NCR", "ED", "ET", "TC", "WT")} if volumes is None else volumes
    return Result(case_name="bad", labels=labels, ijk_to_ras=MATRIX, volumes_ml=volumes,
                  grade_probabilities={"HGG": 0.5, "LGG": 0.5})


def test_none_node(kit):
    with pytest.raises(InputError, match="No volume is selected"):
        volume_from_node(None)


def test_vector_volume_is_rejected(kit, vtk_messages):
    node = kit.scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "colour photo")
    slicer.util.updateVolumeFromArray(node, np.zeros(SHAPE + (3,), np.uint8))
    before = kit.state()
    with pytest.raises(InputError) as error:
        case_from_nodes(t1=node)
    message = str(error.value)
    assert "'colour photo'" in message and "vector" in message and "single-channel scalar volume" in message
    assert "T1" in message
    assert kit.state() == before
    vtk_messages()


def test_multi_component_scalar_node_is_rejected(kit, vtk_messages):
    image = vtk.vtkImageData()  # e.g. an RGB image read into a scalar volume node
    image.SetDimensions(SHAPE[::-1])
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 3)
    node = kit.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "rgb as scalar")
    node.SetAndObserveImageData(image)
    before = kit.state()
    with pytest.raises(InputError, match="'rgb as scalar'.*3 components.*single-channel scalar volume"):
        volume_from_node(node)
    assert kit.state() == before
    vtk_messages()


def test_node_without_image_data(kit, vtk_messages):
    node = kit.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "never loaded")
    before = kit.state()
    with pytest.raises(InputError, match="'never loaded'.*no image data.*Load the image again"):
        case_from_nodes(flair=node)
    assert kit.state() == before
    vtk_messages()


def test_non_volume_node(kit):
    node = kit.scene.AddNewNodeByClass("vtkMRMLModelNode", "a surface")
    with pytest.raises(InputError, match="'a surface'.*not a volume"):
        volume_from_node(node)


def test_same_node_in_two_roles(kit, vtk_messages):
    node = kit.add_volume(np.ones(SHAPE, np.float32), MATRIX, "P1_t1")
    before = kit.state()
    with pytest.raises(InputError) as error:
        case_from_nodes(t1=node, flair=node)
    message = str(error.value)
    assert "'P1_t1'" in message and "T1" in message and "FLAIR" in message
    assert "Select a different volume for one of them" in message
    assert kit.state() == before
    vtk_messages()


def test_non_linear_parent_transform_is_rejected(kit):
    node = kit.add_volume(np.ones(SHAPE, np.float32), MATRIX, "warped")
    transform = kit.scene.AddNewNodeByClass("vtkMRMLGridTransformNode", "warp")
    node.SetAndObserveTransformNodeID(transform.GetID())
    with pytest.raises(InputError, match="non-linear transform 'warp'.*Harden"):
        volume_from_node(node)


def test_wrong_label_shape_leaves_scene_unchanged(kit, vtk_messages):
    reference = kit.add_volume(np.ones(SHAPE, np.float32), MATRIX, "ref", study_item=kit.study())
    before = kit.state()
    with pytest.raises(OutputError, match="shape"):
        write_result_to_scene(result(labels=np.zeros((5, 6), np.uint8)), reference, kit.scene)
    assert kit.state() == before
    vtk_messages()


def test_failure_after_segmentation_removes_everything_added(kit, vtk_messages):
    reference = kit.add_volume(np.ones(SHAPE, np.float32), MATRIX, "ref", study_item=kit.study())
    before = kit.state()
    names_before = {kit.scene.GetNthNode(i).GetID() for i in range(kit.node_count())}
    labels = np.zeros(SHAPE, np.uint8)
    labels[1:3, 2:4, 3:5] = 2
    with pytest.raises(KeyError):  # the segmentation is written, then the volumes table fails
        write_result_to_scene(result(labels=labels, volumes={"NCR": 1.0}), reference, kit.scene)
    assert kit.state() == before
    assert {kit.scene.GetNthNode(i).GetID() for i in range(kit.node_count())} == names_before
    vtk_messages()


def test_save_into_unwritable_folder(tmp_path):
    blocker = tmp_path / "not a folder"
    blocker.write_text("a file where the folder should be")
    target = blocker / "sub" / "case.seg.nrrd"
    with pytest.raises(OutputError, match="Choose a folder you can write to"):
        save_seg_nrrd(result(), target)
    assert sorted(os.listdir(tmp_path)) == ["not a folder"]


def test_save_needs_nrrd_name(tmp_path):
    with pytest.raises(OutputError, match=r"\.seg\.nrrd"):
        save_seg_nrrd(result(), tmp_path / "case.nii.gz")
    assert not os.listdir(tmp_path)


def test_save_onto_a_folder_path(tmp_path):
    (tmp_path / "case.seg.nrrd").mkdir()
    with pytest.raises(OutputError, match="Choose a folder you can write to"):
        save_seg_nrrd(result(), tmp_path / "case.seg.nrrd")
    assert sorted(os.listdir(tmp_path)) == ["case.seg.nrrd"]


def test_the_same_image_loaded_twice_is_rejected_in_two_roles(kit, vtk_messages, brats_dir):
    """Two nodes (not one node in two roles) holding the same real T1: before, all four roles were accepted."""
    t1 = brats_dir / "Brats18_CBICA_ABM_1" / "Brats18_CBICA_ABM_1_t1.nii.gz"
    nodes = {role: kit.volumes.AddArchetypeVolume(str(t1), f"copy as {role}") for role in ("t1", "t1ce", "t2", "flair")}
    before = kit.state()
    with pytest.raises(InputError, match="T1 and T1ce hold the same image.*Each role needs its own sequence"):
        case_from_nodes(**nodes)
    assert kit.state() == before
    vtk_messages()


def test_a_label_map_or_segmentation_in_a_role_is_rejected(kit, vtk_messages, brats_dir):
    """Only the automatic role assignment skipped label maps; a label map given for a role was segmented."""
    folder = brats_dir / "Brats18_CBICA_ABM_1"
    images = {role: kit.volumes.AddArchetypeVolume(str(folder / f"Brats18_CBICA_ABM_1_{role}.nii.gz"), role)
              for role in ("t1", "t1ce", "t2")}
    labels = kit.volumes.AddArchetypeVolume(str(folder / "Brats18_CBICA_ABM_1_seg.nii.gz"), "truth", 1)
    assert labels.IsA("vtkMRMLLabelMapVolumeNode")
    segmentation = kit.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "tumor")
    before = kit.state()
    with pytest.raises(InputError, match=r"'truth' \(selected as FLAIR\) is a label map: labels, not an MR image. "
                                         r"Select the FLAIR image"):
        SceneLogic(kit.scene).segment(**images, flair=labels)  # refused before any model is loaded
    with pytest.raises(InputError, match=r"'tumor' \(selected as T1\) is a segmentation: labels, not an MR image"):
        case_from_nodes(t1=segmentation, t1ce=images["t1ce"])
    assert kit.state() == before
    vtk_messages()

"""A ground truth loaded as a scalar volume (not as a label map node: the scene refuses those by class) is refused
in every role by its values, before any model is loaded, and the scene is left as it was (issue 33)."""

import numpy as np
import pytest

from BrainTumorFusionLib.app.logic import SceneLogic
from BrainTumorFusionLib.app.scene import case_from_nodes
from BrainTumorFusionLib.errors import InputError
from BrainTumorFusionLib.modalities import DISPLAY_NAMES, MODALITIES

CASE = "Brats18_CBICA_ABM_1"


def refusal(label, values="0, 1, 2, 4"):
    return (rf"The {label} volume looks like a label map \(a segmentation or mask: its voxels are only the values "
            rf"{values}\), not an MR image\. Give the {label} image itself \(file or selected volume\)")


@pytest.fixture
def loaded(kit, brats_dir):
    """The four images and the ground truth of a real case as scalar volume nodes, as Add Data loads a file whose
    name does not say "seg"/"label"."""
    folder = brats_dir / CASE
    nodes = {role: kit.volumes.AddArchetypeVolume(str(folder / f"{CASE}_{role}.nii.gz"), f"{CASE}_{role}")
             for role in MODALITIES}
    nodes["truth"] = kit.volumes.AddArchetypeVolume(str(folder / f"{CASE}_seg.nii.gz"), "truth")
    assert nodes["truth"].IsA("vtkMRMLScalarVolumeNode") and not nodes["truth"].IsA("vtkMRMLLabelMapVolumeNode")
    return nodes


def test_the_ground_truth_as_a_scalar_volume_is_refused_in_every_role(kit, vtk_messages, loaded):
    before = kit.state()
    for role in MODALITIES:
        selected = {other: loaded[other] for other in MODALITIES}
        selected[role] = loaded["truth"]
        with pytest.raises(InputError, match=refusal(DISPLAY_NAMES[role])):
            case_from_nodes(**selected)
    selected = {role: loaded[role] for role in MODALITIES}
    with pytest.raises(InputError, match=refusal("FLAIR")):  # the module's Apply and the console
        SceneLogic(kit.scene).segment(**dict(selected, flair=loaded["truth"]))
    assert kit.state() == before
    vtk_messages()


def test_a_brain_mask_given_as_t1_is_refused(kit, vtk_messages, loaded):
    t1 = loaded["t1"]
    mask = kit.add_volume((slicer_array(t1) > 0).astype(np.uint8), ijk_to_ras(t1), "brain mask")
    before = kit.state()
    with pytest.raises(InputError, match=refusal("T1", "0, 1")):
        case_from_nodes(t1=mask, t1ce=loaded["t1ce"], t2=loaded["t2"], flair=loaded["flair"])
    assert kit.state() == before
    vtk_messages()


def slicer_array(node):
    import slicer.util

    return slicer.util.arrayFromVolume(node)


def ijk_to_ras(node):
    import slicer.util
    import vtk

    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)

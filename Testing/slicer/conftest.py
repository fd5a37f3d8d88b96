"""Headless Slicer fixtures: a real MRML scene wired like the desktop application (see SLICER_CORE.md).

`kit` gives a fresh scene per test with the Colors, Volumes, Segmentations and SubjectHierarchy logics
registered, sets the globals slicer.util helpers reach for (slicer.mrmlScene, slicer.modules.<x>.logic())
and restores them afterwards. It also counts VTK errors and warnings (assert_no_vtk_messages).
"""

import types

import numpy as np
import pytest
import slicer
import slicer.util
import vtk

from BrainTumorFusionLib.app.scene import add_volume_node
from BrainTumorFusionLib.files.segments import SEGMENTS


class SceneKit:
    """A wired headless scene plus the checks the scene tests share."""

    def __init__(self):
        self.scene = slicer.vtkMRMLScene()
        self.app = slicer.vtkSlicerApplicationLogic()
        self.app.SetMRMLScene(self.scene)
        self.logics = {}
        self._register(self.app.GetColorLogic(), "Colors")  # not vtkSlicerColorLogic: wants a Slicer home
        self.volumes = self._register(slicer.vtkSlicerVolumesLogic(), "Volumes")
        self.segmentations = self._register(slicer.vtkSlicerSegmentationsModuleLogic(), "Segmentations")
        self._register(slicer.vtkSlicerSubjectHierarchyModuleLogic(), "SubjectHierarchy")
        self.sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(self.scene)

    def _register(self, logic, name):
        logic.SetMRMLApplicationLogic(self.app)
        logic.SetMRMLScene(self.scene)
        self.app.SetModuleLogic(name, logic)
        self.logics[name.lower()] = logic
        return logic

    def modules_namespace(self):
        return types.SimpleNamespace(**{name: types.SimpleNamespace(logic=(lambda l=logic: l))
                                        for name, logic in self.logics.items()})

    # --- scene state -------------------------------------------------------------------------------------
    def node_count(self):
        return self.scene.GetNumberOfNodes()

    def item_count(self):
        children = vtk.vtkIdList()
        self.sh.GetItemChildren(self.sh.GetSceneItemID(), children, True)
        return children.GetNumberOfIds()

    def state(self):
        """What must be unchanged after a failed call: node count and subject hierarchy item count."""
        return self.node_count(), self.item_count()

    def study(self, patient="Patient 1", study="Study 1"):
        patient_item = self.sh.CreateSubjectItem(self.sh.GetSceneItemID(), patient)
        return self.sh.CreateStudyItem(patient_item, study)

    def add_volume(self, array, ijk_to_ras, name="reference", study_item=None):
        node = add_volume_node(self.scene, array, ijk_to_ras, name)
        if study_item is not None:
            self.sh.CreateItem(study_item, node)
        return node

    # --- read-back through Slicer's own API ------------------------------------------------------------
    def labels_on(self, seg_node, reference_node):
        """BraTS label array on the reference grid, one segment exported at a time (no value conventions)."""
        labels = np.zeros(slicer.util.arrayFromVolume(reference_node).shape, dtype=np.uint8)
        for spec in SEGMENTS:
            labelmap = self.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "export")
            ids = vtk.vtkStringArray()
            ids.InsertNextValue(spec.segment_id)
            assert slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
                seg_node, ids, labelmap, reference_node)
            matrix = vtk.vtkMatrix4x4()
            labelmap.GetIJKToRASMatrix(matrix)
            reference = vtk.vtkMatrix4x4()
            reference_node.GetIJKToRASMatrix(reference)
            np.testing.assert_allclose(slicer.util.arrayFromVTKMatrix(matrix),
                                       slicer.util.arrayFromVTKMatrix(reference), atol=1e-6)
            labels[slicer.util.arrayFromVolume(labelmap) > 0] = spec.label
            self.scene.RemoveNode(labelmap)
        return labels

    def load_seg_nrrd(self, path):
        seg_node = self.segmentations.LoadSegmentationFromFile(str(path), False)
        assert seg_node is not None, f"Slicer could not load {path}"
        return seg_node


def voxel_points(array, ijk_to_ras, value):
    """RAS coordinates (N, 3) of the centres of voxels of `array` (K, J, I) equal to `value`."""
    kji = np.argwhere(array == value)
    ijk1 = np.column_stack([kji[:, ::-1], np.ones(len(kji))])
    return (np.asarray(ijk_to_ras, dtype=float) @ ijk1.T).T[:, :3]


def assert_same_labels_physically(a, a_ijk_to_ras, b, b_ijk_to_ras, tol=1e-3):
    """Same label at the same physical points: every labelled voxel centre of `a` falls on a voxel centre
    of `b` with the same label, and both have as many voxels of each label."""
    values = sorted(set(np.unique(a).tolist()) | set(np.unique(b).tolist()) - {0})
    to_b = np.linalg.inv(np.asarray(b_ijk_to_ras, dtype=float))
    for value in values:
        if value == 0:
            continue
        points = voxel_points(a, a_ijk_to_ras, value)
        assert len(points) == int((b == value).sum()), f"label {value}: voxel counts differ"
        ijk = (to_b @ np.column_stack([points, np.ones(len(points))]).T).T[:, :3]
        assert np.abs(ijk - np.round(ijk)).max(initial=0) < tol, f"label {value}: off the other grid"
        i, j, k = np.round(ijk).astype(int).T
        assert (b[k, j, i] == value).all(), f"label {value}: different voxels in physical space"


# Tests cannot import conftest reliably (Testing/ has one too), so the helpers ride on the fixture.
SceneKit.voxel_points = staticmethod(voxel_points)
SceneKit.assert_same_labels_physically = staticmethod(assert_same_labels_physically)


@pytest.fixture
def kit():
    saved = {name: getattr(slicer, name, None) for name in ("mrmlScene", "modules")}
    kit = SceneKit()
    slicer.mrmlScene = kit.scene
    slicer.modules = kit.modules_namespace()
    try:
        yield kit
    finally:
        kit.scene.Clear(1)
        for name, value in saved.items():
            if value is None:
                if hasattr(slicer, name):
                    delattr(slicer, name)
            else:
                setattr(slicer, name, value)


@pytest.fixture
def vtk_messages():
    """Counts VTK errors and warnings while a test runs; call the returned function to assert none."""
    previous = vtk.vtkOutputWindow.GetInstance()
    window = slicer.vtkTestingOutputWindow.GetInstance()
    vtk.vtkOutputWindow.SetInstance(window)
    window.ResetNumberOfLoggedMessages()

    def assert_none():
        assert window.GetNumberOfLoggedWarningErrorMessages() == 0, "VTK logged errors or warnings"
        window.ResetNumberOfLoggedMessages()

    try:
        yield assert_none
    finally:
        vtk.vtkOutputWindow.SetInstance(previous)

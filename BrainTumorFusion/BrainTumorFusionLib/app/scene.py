"""Scene adapter: Slicer MRML nodes <-> Case / Result. The only library module that imports slicer.

Geometry is always carried by Slicer's IJK-to-RAS matrices (never by flipping arrays). Everything this
module adds to a scene is placed in the subject hierarchy beside the reference volume (same study).
"""

from typing import Optional

import numpy as np
import slicer
import slicer.util
import vtk

from ..case import Case, Result
from ..errors import InputError, OutputError
from ..files.seg_nrrd import check_labels
from ..files.segments import SEGMENTS
from ..measurements.regions import REGIONS
from ..modalities import DISPLAY_NAMES, MODALITIES, case_name_of

# Node attribute that records which model made a result, e.g. "hafb" or "ensemble (hafb + segresnet)".
MODEL_ATTRIBUTE = "BrainTumorFusion.Model"
# Attribute of the segmentation node holding the result's warnings, one a line (absent when there are none).
WARNINGS_ATTRIBUTE = "BrainTumorFusion.Warnings"
# Node attribute with what the model "auto" chose and why (absent for a model chosen by name).
MODEL_CHOICE_ATTRIBUTE = "BrainTumorFusion.ModelChoice"
VolumeNode = slicer.vtkMRMLScalarVolumeNode


def _describe(node, role=None):
    where = f" (selected as {DISPLAY_NAMES[role]})" if role else ""
    return f"'{node.GetName()}'{where}"


def vtk_matrix_to_array(vtk_matrix):
    return slicer.util.arrayFromVTKMatrix(vtk_matrix).astype(float)


def transform_to_world(node, what):
    """4x4 matrix of the node's parent transform to world (identity if none); non-linear is rejected."""
    parent = node.GetParentTransformNode()
    if parent is None:
        return np.eye(4)
    if not parent.IsTransformToWorldLinear():
        raise InputError(
            f"The volume {what} is under the non-linear transform '{parent.GetName()}'. Harden the transform "
            "(Data module: right-click the volume > Harden transform) or remove it, then try again.")
    to_world = vtk.vtkMatrix4x4()
    parent.GetMatrixTransformToWorld(to_world)
    return vtk_matrix_to_array(to_world)


def volume_from_node(node: Optional[slicer.vtkMRMLNode], role: Optional[str] = None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(array (K, J, I) copy, 4x4 IJK-to-RAS in world coordinates) of a single-channel scalar volume node.

    A linear parent transform is applied to the matrix (the node itself is left unchanged).
    """
    if node is None:
        raise InputError("No volume is selected. Select a loaded scalar volume and try again.")
    if not node.IsA("vtkMRMLVolumeNode"):
        raise InputError(f"{_describe(node, role)} is a {node.GetClassName()}, not a volume. "
                         "Select a single-channel scalar volume.")
    image = node.GetImageData()
    if image is None or image.GetNumberOfPoints() == 0:
        raise InputError(f"The volume {_describe(node, role)} has no image data. "
                         "Load the image again or select another volume.")
    if not node.IsA("vtkMRMLScalarVolumeNode") or node.IsA("vtkMRMLVectorVolumeNode") \
            or image.GetNumberOfScalarComponents() != 1:
        raise InputError(
            f"The volume {_describe(node, role)} is a vector/multi-channel volume "
            f"({image.GetNumberOfScalarComponents()} components). Select a single-channel scalar volume "
            "(e.g. convert it with the Vector to Scalar Volume module).")
    array = np.array(slicer.util.arrayFromVolume(node), copy=True)
    if array.ndim != 3:
        raise InputError(f"The volume {_describe(node, role)} has {array.ndim} dimensions. "
                         "Select a single-channel 3D scalar volume.")
    ijk_to_ras = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(ijk_to_ras)
    return array, transform_to_world(node, _describe(node, role)) @ vtk_matrix_to_array(ijk_to_ras)


def case_from_nodes(t1: Optional[VolumeNode] = None, t1ce: Optional[VolumeNode] = None,
                    t2: Optional[VolumeNode] = None, flair: Optional[VolumeNode] = None,
                    name: Optional[str] = None, **preparation) -> Case:
    """Validated Case from up to four volume nodes (reference grid: T1ce's, or `reference`'s, when present, else the
    first present in MODALITIES order). `preparation`: preparation.assemble_case's register, reference, skull_strip,
    progress and should_cancel. The nodes are only read."""
    from ..preparation.inputs import assemble_case  # lazy: keeps this module importable on its own

    nodes = {"t1": t1, "t1ce": t1ce, "t2": t2, "flair": flair}
    seen = {}
    for role in MODALITIES:
        node = nodes[role]
        if node is None:
            continue
        labels = ("label map" if node.IsA("vtkMRMLLabelMapVolumeNode")
                  else "segmentation" if node.IsA("vtkMRMLSegmentationNode") else None)
        if labels:  # a label map is a scalar volume node, so the checks below would let it through
            raise InputError(f"{_describe(node, role)} is a {labels}: labels, not an MR image. Select the "
                             f"{DISPLAY_NAMES[role]} image (a scalar volume) instead.")
        key = node.GetID() or id(node)
        if key in seen:
            raise InputError(
                f"The volume '{node.GetName()}' is selected both as {DISPLAY_NAMES[seen[key]]} and as "
                f"{DISPLAY_NAMES[role]}. Select a different volume for one of them.")
        seen[key] = role
    volumes = {role: (volume_from_node(nodes[role], role) if nodes[role] is not None else None)
               for role in MODALITIES}
    if name is None:
        reference = next((nodes[role] for role in MODALITIES if nodes[role] is not None), None)
        name = case_name_of(reference.GetName()) if reference is not None else "case"
    return assemble_case(volumes, name, **preparation)


def _moves_nothing(matrix: np.ndarray) -> bool:
    """The rigid RAS matrix shifts by under 0.5 mm and turns by under 0.5 degree: nothing the 2 mm registration can
    tell from its own noise."""
    matrix = np.asarray(matrix, dtype=float)
    rotation_degrees = np.degrees(np.arccos(np.clip((np.trace(matrix[:3, :3]) - 1) / 2, -1.0, 1.0)))
    return bool(np.linalg.norm(matrix[:3, 3]) < 0.5 and rotation_degrees < 0.5)


def add_registration_transforms(scene: slicer.vtkMRMLScene, nodes: dict[str, Optional[VolumeNode]],
                                transforms: dict[str, np.ndarray], reference_role: str) -> list:
    """For each registered role: a linear transform node "BrainTumorFusion <role> to <reference>" placed above that
    role's volume node, so the volume shows where the registration put it (on the result). `transforms`: role -> 4x4
    RAS matrix moving the input's world coordinates onto the reference's (registration.ras_transform_to_parent).
    Undo: take the volume out of the transform (Data module) or delete the transform node; the volume's voxels and
    geometry are not touched. A volume already under a transform keeps it: the new node goes between the two. A
    registration that moves nothing (under 0.5 mm and 0.5 degree, e.g. a second run on volumes already placed by the
    first) adds no node."""
    added, moved = [], []
    try:
        for role, matrix in transforms.items():
            if _moves_nothing(matrix):
                continue
            node = nodes[role]
            parent = node.GetParentTransformNode()
            moved.append((node, parent))
            to_world = transform_to_world(node, _describe(node, role))
            name = f"BrainTumorFusion {DISPLAY_NAMES[role]} to {DISPLAY_NAMES[reference_role]}"
            transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", scene.GenerateUniqueName(name))
            added.append(transform)
            # world = parent . this . volume, and it must equal registration . parent . volume
            local = np.linalg.inv(to_world) @ np.asarray(matrix, dtype=float) @ to_world
            transform.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(local))
            if parent is not None:
                transform.SetAndObserveTransformNodeID(parent.GetID())
            place_in_hierarchy(scene, transform, nodes.get(reference_role))
            node.SetAndObserveTransformNodeID(transform.GetID())
    except BaseException:
        for node, parent in moved:  # the volumes go back under the transforms they had
            node.SetAndObserveTransformNodeID(parent.GetID() if parent is not None else None)
        remove_nodes(scene, added)
        raise
    return added


def add_volume_node(scene: slicer.vtkMRMLScene, array: np.ndarray, ijk_to_ras: np.ndarray, name: str,
                    labelmap: bool = False) -> VolumeNode:
    """Add a scalar (or labelmap) volume node holding a copy of `array` (K, J, I) placed by `ijk_to_ras`."""
    node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode" if labelmap else "vtkMRMLScalarVolumeNode", name)
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(np.asarray(ijk_to_ras, dtype=float)))
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(array))
    return node


def remove_nodes(scene, nodes):
    """Remove nodes with their subject hierarchy items, display and storage nodes (removing a node from the
    scene does not remove those)."""
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    for node in nodes:
        if node is None or node.GetScene() is None:
            continue
        if sh is not None and sh.GetItemByDataNode(node):
            sh.RemoveItem(sh.GetItemByDataNode(node), False, False)
        dependents = []
        if node.IsA("vtkMRMLDisplayableNode"):
            dependents += [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())]
        if node.IsA("vtkMRMLStorableNode"):
            dependents += [node.GetNthStorageNode(i) for i in range(node.GetNumberOfStorageNodes())]
        scene.RemoveNode(node)
        for dependent in dependents:
            if dependent is not None and dependent.GetScene() is not None:
                scene.RemoveNode(dependent)


def _fill_segmentation(seg_node, labelmap_node):
    """Create the SEGMENTS (fixed order, empty if absent) and import the labelmap into them."""
    segmentation = seg_node.GetSegmentation()
    for spec in SEGMENTS:
        segmentation.AddEmptySegment(spec.segment_id, spec.name, spec.color)
        segment = segmentation.GetSegment(spec.segment_id)
        segment.SetTerminology(spec.terminology)
        segment.SetNameAutoGenerated(False)  # explicit: Slicer must not rename/recolour from terminology
        segment.SetColorAutoGenerated(False)
    # Label value v goes into segment ids[v - 1]; unused values map to "" (none occur after check_labels).
    by_label = {spec.label: spec.segment_id for spec in SEGMENTS}
    ids = vtk.vtkStringArray()
    for value in range(1, max(by_label) + 1):
        ids.InsertNextValue(by_label.get(value, ""))
    if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap_node, seg_node, ids):
        raise OutputError("Slicer could not import the label map into a segmentation. See the log for details.")
    if segmentation.GetNumberOfSegments() != len(SEGMENTS):
        raise OutputError("The label map did not import into the expected segments. See the log for details.")


def _local_matrix(reference_node, ijk_to_ras):
    """World IJK-to-RAS expressed in the reference's transform frame, and that transform node (or None)."""
    if reference_node is None or reference_node.GetParentTransformNode() is None:
        return np.asarray(ijk_to_ras, dtype=float), None
    to_world = transform_to_world(reference_node, _describe(reference_node))
    return np.linalg.inv(to_world) @ np.asarray(ijk_to_ras, dtype=float), reference_node.GetParentTransformNode()


def place_in_hierarchy(scene, node, parent_like):
    """Put `node` under the subject hierarchy parent (study) of `parent_like` (scene root if none)."""
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    parent = sh.GetSceneItemID()
    if parent_like is not None and sh.GetItemByDataNode(parent_like):
        parent = sh.GetItemParent(sh.GetItemByDataNode(parent_like))
    item = sh.GetItemByDataNode(node)
    if item:
        sh.SetItemParent(item, parent)
    else:
        sh.CreateItem(parent, node)


def write_segmentation(result: Result, reference_node: Optional[VolumeNode],
                       scene: slicer.vtkMRMLScene) -> slicer.vtkMRMLSegmentationNode:
    """Add a segmentation node "<case> tumor" with the three SEGMENTS (BraTS labels of `result`)."""
    labels = check_labels(result.labels)
    matrix, transform = _local_matrix(reference_node, result.ijk_to_ras)
    labelmap = seg_node = None
    try:
        labelmap = add_volume_node(scene, labels, matrix, scene.GenerateUniqueName("BTF temporary"), labelmap=True)
        seg_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{result.case_name} tumor")
        seg_node.CreateDefaultDisplayNodes()
        seg_node.SetReferenceImageGeometryParameterFromVolumeNode(reference_node or labelmap)
        if transform is not None:  # both in the reference's frame, so it follows later transform edits
            labelmap.SetAndObserveTransformNodeID(transform.GetID())
            seg_node.SetAndObserveTransformNodeID(transform.GetID())
        _fill_segmentation(seg_node, labelmap)
        place_in_hierarchy(scene, seg_node, reference_node)
    except BaseException:
        remove_nodes(scene, [seg_node])
        raise
    finally:
        remove_nodes(scene, [labelmap])
    return seg_node


def add_table(scene, name, columns, parent_like):
    """Table node from (column name, vtk array class, values) triples, placed beside `parent_like`."""
    table_node = scene.AddNewNodeByClass("vtkMRMLTableNode", name)
    table_node.SetUseColumnTitleAsColumnHeader(True)
    table = table_node.GetTable()
    for column_name, array_class, values in columns:
        array = array_class()
        array.SetName(column_name)
        for value in values:
            array.InsertNextValue(value)
        table.AddColumn(array)
    table_node.Modified()
    place_in_hierarchy(scene, table_node, parent_like)
    return table_node


def write_tables(result: Result, scene: slicer.vtkMRMLScene, parent_like: Optional[slicer.vtkMRMLNode] = None
                 ) -> tuple[slicer.vtkMRMLTableNode, Optional[slicer.vtkMRMLTableNode]]:
    """Add "<case> tumor volumes" (Region, Volume (mL)) and, with grade probabilities, "<case> grade"."""
    volumes = [float(result.volumes_ml[region]) for region in REGIONS]
    added = []
    try:
        added.append(add_table(scene, f"{result.case_name} tumor volumes",
                                [("Region", vtk.vtkStringArray, REGIONS),
                                 ("Volume (mL)", vtk.vtkDoubleArray, volumes)], parent_like))
        table_node = added[0]
        table_node.SetColumnUnitLabel("Volume (mL)", "mL")
        grade_node = None
        if result.grade_probabilities is not None:
            grades = list(result.grade_probabilities)
            grade_node = add_table(scene, f"{result.case_name} grade",
                                    [("Grade", vtk.vtkStringArray, grades),
                                     ("Probability", vtk.vtkDoubleArray,
                                      [float(result.grade_probabilities[g]) for g in grades])], parent_like)
    except BaseException:
        remove_nodes(scene, added)
        raise
    return table_node, grade_node


def write_result_to_scene(result: Result, reference_node: Optional[VolumeNode], scene: slicer.vtkMRMLScene
                          ) -> tuple[slicer.vtkMRMLSegmentationNode, slicer.vtkMRMLTableNode,
                                     Optional[slicer.vtkMRMLTableNode]]:
    """Segmentation + tables (each with the model in MODEL_ATTRIBUTE, the segmentation with the warnings in
    WARNINGS_ATTRIBUTE); on any failure every node added here is removed again."""
    before = {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}
    try:
        seg_node = write_segmentation(result, reference_node, scene)
        volumes_table, grade_table = write_tables(result, scene, parent_like=reference_node)
        for node in filter(None, (seg_node, volumes_table, grade_table)):
            node.SetAttribute(MODEL_ATTRIBUTE, result.model)
            if result.model_choice:
                node.SetAttribute(MODEL_CHOICE_ATTRIBUTE, result.model_choice)
        if result.warnings:
            seg_node.SetAttribute(WARNINGS_ATTRIBUTE, "\n".join(result.warnings))
    except BaseException:
        added = [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes())]
        remove_nodes(scene, [node for node in reversed(added) if node.GetID() not in before])
        raise
    return seg_node, volumes_table, grade_table



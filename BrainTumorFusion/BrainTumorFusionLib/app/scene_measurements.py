"""RANO measurements in the scene: a table per exam and the two diameters of each target lesion as line markups.

The lines stay editable: `LinkedMeasurements` observes them, and when a reader moves an end point the lesion's
diameters, the product, measurability, the target lesions and the SPD in the table follow the lines (the
measurements keep the rule that the two diameters are the ones given; a reader is trusted to keep them
perpendicular). Lines lie in world (RAS) coordinates, at the root of the subject hierarchy beside the table.
"""

from typing import Optional

import numpy as np
import slicer
import vtk

from ..errors import InputError
from ..files.segments import SEGMENTS
from ..measurements.rano import Measurements
from ..measurements.response import Comparison
from .scene import add_table, place_in_hierarchy, remove_nodes, transform_to_world, vtk_matrix_to_array

LESION_ATTRIBUTE = "BrainTumorFusion.Lesion"  # on a line: "<lesion number> longest" or "... perpendicular"
COLUMNS = ("Lesion", "Volume (mL)", "Longest (mm)", "Perpendicular (mm)", "Product (mm2)", "Measurable", "Target",
           "Note")
SPD_ROW = "SPD (targets)"


def _rows(measurements: Measurements) -> list[tuple]:
    rows = [(str(lesion.number), lesion.volume_ml, lesion.longest_mm, lesion.perpendicular_mm, lesion.product_mm2,
             "yes" if lesion.measurable else "no", "yes" if lesion.target else "no", lesion.note)
            for lesion in measurements.lesions]
    rows.append((SPD_ROW, measurements.volumes_ml["ET"], 0.0, 0.0, measurements.spd_mm2, "", "",
                 f"{len(measurements.targets)} target lesion(s); all enhancing tumor's volume"))
    return rows


def _fill(table_node: slicer.vtkMRMLTableNode, measurements: Measurements) -> None:
    table = table_node.GetTable()
    rows = _rows(measurements)
    table.SetNumberOfRows(len(rows))
    for row, values in enumerate(rows):
        for column, value in enumerate(values):
            table.SetValue(row, column, vtk.vtkVariant(value))
    table_node.Modified()


class LinkedMeasurements:
    """A measurements table and its target lesions' lines, kept in step: edit a line, the table follows."""

    def __init__(self, measurements: Measurements, table: slicer.vtkMRMLTableNode,
                 lines: dict[int, tuple[slicer.vtkMRMLMarkupsLineNode, slicer.vtkMRMLMarkupsLineNode]]):
        self.measurements, self.table, self.lines = measurements, table, lines
        self._observers = [(line, line.AddObserver(slicer.vtkMRMLMarkupsNode.PointModifiedEvent, self._on_edit))
                           for pair in lines.values() for line in pair]

    def _on_edit(self, caller=None, event=None) -> None:
        measurements = self.measurements
        for number, (longest, perpendicular) in self.lines.items():
            if longest.GetNumberOfControlPoints() == 2 and perpendicular.GetNumberOfControlPoints() == 2:
                measurements = measurements.with_diameters(number, longest.GetLineLengthWorld(),
                                                           perpendicular.GetLineLengthWorld())
        self.measurements = measurements
        _fill(self.table, measurements)

    def stop(self) -> None:
        """Stop following the lines (the nodes stay)."""
        for line, tag in self._observers:
            line.RemoveObserver(tag)
        self._observers = []


def write_measurements(measurements: Measurements, scene: slicer.vtkMRMLScene, name: str,
                       parent_like: Optional[slicer.vtkMRMLNode] = None) -> LinkedMeasurements:
    """Add "<name> RANO measurements" and the lines of each target lesion; on failure nothing stays added."""
    added = []
    try:
        table = add_table(scene, f"{name} RANO measurements",
                           [(column, vtk.vtkStringArray if column in ("Lesion", "Measurable", "Target", "Note")
                             else vtk.vtkDoubleArray, []) for column in COLUMNS], parent_like)
        added.append(table)
        _fill(table, measurements)
        lines = {}
        for lesion in measurements.targets:
            pair = []
            for which, points in (("longest", lesion.longest_line), ("perpendicular", lesion.perpendicular_line)):
                line = scene.AddNewNodeByClass("vtkMRMLMarkupsLineNode", f"{name} lesion {lesion.number} {which}")
                added.append(line)
                line.CreateDefaultDisplayNodes()
                for point in points:
                    line.AddControlPointWorld(vtk.vtkVector3d(*point))
                line.SetAttribute(LESION_ATTRIBUTE, f"{lesion.number} {which}")
                place_in_hierarchy(scene, line, parent_like)
                pair.append(line)
            lines[lesion.number] = tuple(pair)
    except BaseException:
        remove_nodes(scene, added)
        raise
    return LinkedMeasurements(measurements, table, lines)


def labels_from_segmentation(segmentation: slicer.vtkMRMLSegmentationNode) -> tuple[np.ndarray, np.ndarray]:
    """(BraTS label map (K, J, I), its IJK-to-RAS in world coordinates) of one of this extension's segmentation
    nodes, on its reference geometry."""
    found = [spec for spec in SEGMENTS if segmentation.GetSegmentation().GetSegment(spec.segment_id)]
    if not found:
        raise InputError(f"'{segmentation.GetName()}' has none of the segments this extension writes "
                         f"({', '.join(spec.segment_id for spec in SEGMENTS)}); measure a segmentation made by "
                         "Brain Tumor Fusion, or name its segments so.")
    ids = vtk.vtkStringArray()
    for spec in found:
        ids.InsertNextValue(spec.segment_id)
    scene = segmentation.GetScene()
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", scene.GenerateUniqueName("BTF temporary"))
    try:
        slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(segmentation, ids, labelmap, None)
        exported = slicer.util.arrayFromVolume(labelmap).copy()
        matrix = vtk.vtkMatrix4x4()
        labelmap.GetIJKToRASMatrix(matrix)
        ijk_to_ras = vtk_matrix_to_array(matrix)
        if segmentation.GetParentTransformNode() is not None:
            ijk_to_ras = transform_to_world(segmentation, f"'{segmentation.GetName()}'") @ ijk_to_ras
    finally:
        remove_nodes(scene, [labelmap])
    labels = np.zeros(exported.shape, dtype=np.uint8)
    for value, spec in enumerate(found, start=1):  # exported values follow the order of `ids`
        labels[exported == value] = spec.label
    return labels, ijk_to_ras


def write_comparison(comparison: Comparison, scene: slicer.vtkMRMLScene, name: str,
                     parent_like: Optional[slicer.vtkMRMLNode] = None) -> slicer.vtkMRMLTableNode:
    """Add "<name> response": each volume and the SPD at baseline and follow-up with their change, the lesion
    counts, and both response categories with the imaging-only caveat."""
    quantities, before, after, change, relative, notes = [], [], [], [], [], []
    for quantity, values in comparison.changes().items():
        quantities.append(quantity)
        before.append(float(values["baseline"]))
        after.append(float(values["follow_up"]))
        change.append(float(values["change"]))
        relative.append("" if values["relative"] is None else f"{values['relative']:+.1%}")
        notes.append("")
    for quantity, text in (("new lesions", ", ".join(map(str, comparison.new_lesions)) or "none"),
                           ("vanished lesions", ", ".join(map(str, comparison.vanished_lesions)) or "none"),
                           ("response (SPD)", comparison.label()),
                           ("response (volumetric)", comparison.label(comparison.volumetric_category)),
                           ("why", "; ".join(comparison.reasons))):
        quantities.append(quantity)
        before.append(0.0)
        after.append(0.0)
        change.append(0.0)
        relative.append("")
        notes.append(text)
    return add_table(scene, f"{name} response",
                     [("Quantity", vtk.vtkStringArray, quantities), ("Baseline", vtk.vtkDoubleArray, before),
                      ("Follow-up", vtk.vtkDoubleArray, after), ("Change", vtk.vtkDoubleArray, change),
                      ("Relative change", vtk.vtkStringArray, relative), ("Note", vtk.vtkStringArray, notes)],
                     parent_like)

"""RANO measurements in a real headless scene: the table and the target lesions' lines written with a result, a
line edited by hand and the table following it, `logic.measure` on a segmentation node, and `logic.compare` of two
exams (a case against itself, and against a copy whose enhancing tumor was removed)."""

import numpy as np
import pytest
import SimpleITK as sitk
import slicer.util

from BrainTumorFusionLib.app import logic as logic_module
from BrainTumorFusionLib.app.logic import MEASUREMENTS_ATTRIBUTE, SceneLogic
from BrainTumorFusionLib.app.scene_measurements import SPD_ROW
from BrainTumorFusionLib.case import LABEL_ENHANCING, LABEL_NECROTIC, Result
from BrainTumorFusionLib.errors import OutputError
from BrainTumorFusionLib.measurements.rano import measure
from BrainTumorFusionLib.measurements.regions import region_volumes
from BrainTumorFusionLib.measurements.response import CAVEAT, COMPLETE, STABLE
from BrainTumorFusionLib.preparation.geometry import ijk_to_ras_of

CASE = "Brats18_CBICA_AME_1"  # two measurable enhancing lesions and small ones in its ground truth


@pytest.fixture
def exam(kit, brats_dir):
    """The case's T1ce loaded by Slicer and its ground-truth labels as a Result on that grid."""
    folder = brats_dir / CASE
    reference = kit.volumes.AddArchetypeVolume(str(folder / f"{CASE}_t1ce.nii.gz"), f"{CASE}_t1ce")
    image = sitk.ReadImage(str(folder / f"{CASE}_seg.nii.gz"))
    labels, ijk_to_ras = sitk.GetArrayFromImage(image).astype(np.uint8), ijk_to_ras_of(image)
    return reference, labels, ijk_to_ras


def result_of(labels, ijk_to_ras, name=CASE):
    return Result(case_name=name, labels=labels, ijk_to_ras=ijk_to_ras,
                  volumes_ml=region_volumes(labels, abs(np.linalg.det(ijk_to_ras[:3, :3])) / 1000),
                  measurements=measure(labels, ijk_to_ras))


def rows(table_node):
    table = table_node.GetTable()
    names = [table.GetColumn(c).GetName() for c in range(table.GetNumberOfColumns())]
    return [{name: table.GetValue(r, c).ToString() for c, name in enumerate(names)}
            for r in range(table.GetNumberOfRows())]


def lines_of(kit):
    return {node.GetName(): node for node in kit.scene.GetNodesByClass("vtkMRMLMarkupsLineNode")}


def test_a_result_brings_its_measurements_table_and_the_target_lesions_lines(kit, vtk_messages, exam):
    reference, labels, ijk_to_ras = exam
    result = result_of(labels, ijk_to_ras)
    segmentation, _, _ = SceneLogic(kit.scene).write_result(result, reference)
    table = kit.scene.GetNodeByID(segmentation.GetAttribute(MEASUREMENTS_ATTRIBUTE))
    assert table.GetName() == f"{CASE} RANO measurements"
    listed = rows(table)
    measurements = result.measurements
    assert len(listed) == len(measurements.lesions) + 1 and listed[-1]["Lesion"] == SPD_ROW
    assert float(listed[-1]["Product (mm2)"]) == pytest.approx(measurements.spd_mm2)
    for row, lesion in zip(listed, measurements.lesions):
        assert float(row["Longest (mm)"]) == pytest.approx(lesion.longest_mm)
        assert row["Target"] == ("yes" if lesion.target else "no")
    lines = lines_of(kit)
    assert len(measurements.targets) == 2 and len(lines) == 4
    for lesion in measurements.targets:
        longest = lines[f"{CASE} lesion {lesion.number} longest"]
        perpendicular = lines[f"{CASE} lesion {lesion.number} perpendicular"]
        assert longest.GetLineLengthWorld() == pytest.approx(lesion.longest_mm, abs=0.01)
        assert perpendicular.GetLineLengthWorld() == pytest.approx(lesion.perpendicular_mm, abs=0.01)
    vtk_messages()


def test_editing_a_line_updates_the_product_and_the_spd(kit, exam):
    reference, labels, ijk_to_ras = exam
    result = result_of(labels, ijk_to_ras)
    segmentation, _, _ = SceneLogic(kit.scene).write_result(result, reference)
    table = kit.scene.GetNodeByID(segmentation.GetAttribute(MEASUREMENTS_ATTRIBUTE))
    first = result.measurements.targets[0]
    line = lines_of(kit)[f"{CASE} lesion {first.number} longest"]
    start, end = np.array(first.longest_line[0]), np.array(first.longest_line[1])
    longer_end = start + (end - start) * 1.5  # the reader drags one end 50 % further out
    line.SetNthControlPointPositionWorld(1, *longer_end)
    listed = rows(table)
    row = next(row for row in listed if row["Lesion"] == str(first.number))
    assert float(row["Longest (mm)"]) == pytest.approx(first.longest_mm * 1.5, abs=0.02)
    assert float(row["Product (mm2)"]) == pytest.approx(first.longest_mm * 1.5 * first.perpendicular_mm, rel=1e-3)
    expected_spd = result.measurements.spd_mm2 + 0.5 * first.product_mm2
    assert float(listed[-1]["Product (mm2)"]) == pytest.approx(expected_spd, rel=1e-3)


def test_measure_reads_a_segmentation_node_back_to_the_same_measurements(kit, exam):
    reference, labels, ijk_to_ras = exam
    logic = SceneLogic(kit.scene)
    segmentation, _, _ = logic.write_result(result_of(labels, ijk_to_ras), reference)
    measured = logic.measure(segmentation, add_to_scene=False)
    expected = measure(labels, ijk_to_ras)
    assert measured.spd_mm2 == pytest.approx(expected.spd_mm2)
    assert [lesion.volume_ml for lesion in measured.lesions] == [lesion.volume_ml for lesion in expected.lesions]
    assert measured.volumes_ml == expected.volumes_ml


def test_compare_an_exam_with_itself_is_stable_and_without_enhancing_tumor_a_complete_response(kit, exam):
    reference, labels, ijk_to_ras = exam
    logic = SceneLogic(kit.scene)
    baseline, _, _ = logic.write_result(result_of(labels, ijk_to_ras, "baseline"), reference)
    same = logic.compare(baseline, baseline)
    assert same.category == STABLE and not same.new_lesions and not same.vanished_lesions
    treated = np.where(labels == LABEL_ENHANCING, LABEL_NECROTIC, labels).astype(np.uint8)
    follow_up, _, _ = logic.write_result(result_of(treated, ijk_to_ras, "follow-up"), reference)
    response = logic.compare(baseline, follow_up)
    assert response.category == COMPLETE and CAVEAT in response.label()
    table = kit.scene.GetFirstNodeByName("follow-up tumor response")
    listed = {row["Quantity"]: row for row in rows(table)}
    assert CAVEAT in listed["response (SPD)"]["Note"]
    assert float(listed["ET_ml"]["Follow-up"]) == 0.0


def test_a_failure_while_writing_the_measurements_leaves_the_scene_as_it_was(kit, exam, monkeypatch):
    reference, labels, ijk_to_ras = exam
    before = kit.state()

    def fail(*args, **kwargs):
        raise OutputError("disk full")

    monkeypatch.setattr(logic_module, "write_measurements", fail)
    with pytest.raises(OutputError):
        SceneLogic(kit.scene).write_result(result_of(labels, ijk_to_ras), reference)
    assert kit.state() == before
    assert slicer.util.arrayFromVolume(reference).any()  # the input is untouched

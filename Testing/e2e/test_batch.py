"""Batch runs on real cases: outputs on the input grid, Slicer-readable .seg.nrrd, resume, cancel, failures."""

import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk

from BrainTumorFusionLib.app.batch import run_batch
from BrainTumorFusionLib.engine.catalogue import Catalogue
from BrainTumorFusionLib.engine.pipeline import Pipeline
from BrainTumorFusionLib.errors import Cancelled, InputError, OutputError
from BrainTumorFusionLib.files.segments import SEGMENTS
from Testing.batch_cases import intensity_catalogue, random_hafb_catalogue, run_cli, settings_for
from Testing.realdata import brats_case_dir

CASES = ("Brats18_CBICA_ABM_1", "Brats18_2013_11_1")


def linked_input(tmp_path, cases=CASES):
    """An input folder of links to real case folders (the data itself stays in ../shared)."""
    folder = tmp_path / "input"
    folder.mkdir()
    for case in cases:
        (folder / case).symlink_to(brats_case_dir(case), target_is_directory=True)
    (folder / "notes.txt").write_text("ignored")
    return folder


@pytest.fixture
def catalogue(tmp_path):
    return intensity_catalogue(tmp_path / "models")


class CountingPipeline(Pipeline):
    def __init__(self, catalogue):
        super().__init__(model="intensity", device="cpu", catalogue=Catalogue.load([catalogue]))
        self.cases = []

    def run(self, case, progress=None, should_cancel=None):
        self.cases.append(case.name)
        return super().run(case, progress, should_cancel)


def assert_on_input_grid(path, case_id):
    written = sitk.ReadImage(str(path))
    reference = sitk.ReadImage(str(brats_case_dir(case_id) / f"{case_id}_t1.nii.gz"))
    assert written.GetSize() == reference.GetSize()
    np.testing.assert_allclose(written.GetOrigin(), reference.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(written.GetSpacing(), reference.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(written.GetDirection(), reference.GetDirection(), atol=1e-6)
    assert set(np.unique(sitk.GetArrayViewFromImage(written))) <= {0, 1, 2, 4}


def read_summary(folder):
    with open(folder / "summary.csv", newline="") as stream:
        return list(csv.DictReader(stream))


def test_batch_writes_outputs_on_input_grid_and_resumes(tmp_path, catalogue):
    import slicer

    output = tmp_path / "out"
    pipeline = CountingPipeline(catalogue)
    rows = run_batch(linked_input(tmp_path), output, settings_for(catalogue), pipeline, show_progress=False)
    assert [r["status"] for r in rows] == ["done", "done"] and sorted(pipeline.cases) == sorted(CASES)
    for case_id in CASES:
        assert_on_input_grid(output / f"{case_id}_seg.nii.gz", case_id)
        segmentation = slicer.vtkMRMLSegmentationNode()
        storage = slicer.vtkMRMLSegmentationStorageNode()
        storage.SetFileName(str(output / f"{case_id}.seg.nrrd"))
        assert storage.ReadData(segmentation)
        names = [segmentation.GetSegmentation().GetNthSegment(i).GetName() for i in range(3)]
        assert names == [spec.name for spec in SEGMENTS]
    summary = read_summary(output)
    assert [r["case_id"] for r in summary] == sorted(CASES)
    assert all(float(r["WT_ml"]) > 0 and r["device"] == "cpu fp32" for r in summary)  # device and precision
    for row in summary:  # the RANO columns repeat the record's measurements section
        measurements = json.loads((output / f"{row['case_id']}.json").read_text())["measurements"]
        assert row["lesions"] == str(measurements["lesion_count"]) == str(len(measurements["lesions"]))
        assert float(row["spd_mm2"]) == measurements["spd_mm2"]
        assert row["measurable_lesions"] == str(measurements["measurable_count"])
    assert sorted(p.name for p in output.iterdir()) == sorted(
        ["summary.csv", ".summary.csv.lock"] + [f"{c}{end}" for c in CASES for end in (".seg.nrrd", "_seg.nii.gz",
                                                                                         ".json")])

    again = CountingPipeline(catalogue)
    rows = run_batch(output.parent / "input", output, settings_for(catalogue), again, show_progress=False)
    assert again.cases == [] and [r["status"] for r in rows] == ["done", "done"]
    assert read_summary(output) == summary


def test_cancel_keeps_finished_cases_and_the_next_run_finishes_the_rest(tmp_path, catalogue):
    output = tmp_path / "out"
    with pytest.raises(Cancelled):  # the user cancels once the first case is recorded
        run_batch(linked_input(tmp_path), output, settings_for(catalogue), CountingPipeline(catalogue),
                  show_progress=False, should_cancel=lambda: (output / "summary.csv").exists())
    first = sorted(CASES)[0]
    assert sorted(p.name for p in output.iterdir()) == sorted(["summary.csv", ".summary.csv.lock", f"{first}.json",
                                                               f"{first}.seg.nrrd", f"{first}_seg.nii.gz"])
    resumed = CountingPipeline(catalogue)
    run_batch(tmp_path / "input", output, settings_for(catalogue), resumed, show_progress=False)
    assert resumed.cases == [sorted(CASES)[1]]


def test_cancel_inside_a_case_writes_nothing_for_it(tmp_path, catalogue):
    output = tmp_path / "out"
    with pytest.raises(Cancelled):
        run_batch(linked_input(tmp_path, CASES[:1]), output, settings_for(catalogue), CountingPipeline(catalogue),
                  show_progress=False, should_cancel=lambda: True)
    assert list(output.iterdir()) == []


def test_case_with_missing_modality_fails_alone(tmp_path, catalogue):
    folder = linked_input(tmp_path, CASES[:1])
    partial = folder / "partial"
    partial.mkdir()
    for role in ("t1", "t2"):
        (partial / f"partial_{role}.nii.gz").symlink_to(brats_case_dir(CASES[0]) / f"{CASES[0]}_{role}.nii.gz")
    (partial / "partial_flair.nii.gz").write_text("not an image")  # the model's error comes before any reading
    rows = run_batch(folder, tmp_path / "out", settings_for(catalogue), CountingPipeline(catalogue),
                     show_progress=False)
    status = {r["case_id"]: (r["status"], r["message"]) for r in rows}
    assert status[CASES[0]][0] == "done"
    assert status["partial"][0] == "failed" and "needs T1ce" in status["partial"][1]
    assert not (tmp_path / "out" / "partial_seg.nii.gz").exists()


def test_input_and_output_folder_errors_come_before_any_model_loads(tmp_path, catalogue):
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    loaded = []

    def load():
        loaded.append(True)
        return CountingPipeline(catalogue)

    with pytest.raises(OutputError, match="cannot be written"):
        run_batch(linked_input(tmp_path, CASES[:1]), blocker / "out", settings_for(catalogue), load,
                  show_progress=False)
    with pytest.raises(InputError, match="does not exist"):
        run_batch(tmp_path / "missing", tmp_path / "out", settings_for(catalogue), load, show_progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="No case found"):
        run_batch(tmp_path / "empty", tmp_path / "out", settings_for(catalogue), load, show_progress=False)
    assert loaded == []


def test_command_line_batch_with_a_random_network(tmp_path):
    catalogue = random_hafb_catalogue(tmp_path)
    output = tmp_path / "out"
    done = run_cli("segment", "--input-dir", str(linked_input(tmp_path)), "--output-dir", str(output),
                   "--model", "random-hafb", "--catalogue", str(catalogue), "--device", "cpu")
    assert done.returncode == 0, done.stderr
    assert "2 of 2 cases done" in done.stdout
    for case_id in CASES:
        assert_on_input_grid(output / f"{case_id}_seg.nii.gz", case_id)
    again = run_cli("segment", "--input-dir", str(tmp_path / "input"), "--output-dir", str(output),
                    "--model", "random-hafb", "--catalogue", str(catalogue))
    assert again.returncode == 0 and "already done" in again.stderr


def test_command_line_errors_are_specific(tmp_path):
    unknown = run_cli("segment", "--input-dir", str(linked_input(tmp_path)), "--output-dir",
                      str(tmp_path / "out"), "--model", "nope")
    assert unknown.returncode == 2 and "Unknown segmentation model 'nope'" in unknown.stderr
    assert not (tmp_path / "out").exists()
    catalogue = random_hafb_catalogue(tmp_path)
    (tmp_path / "random-hafb.pt").write_bytes(b"tampered")
    tampered = run_cli("segment", "--input-dir", str(tmp_path / "input"), "--output-dir", str(tmp_path / "out"),
                       "--model", "random-hafb", "--catalogue", str(catalogue))
    assert tampered.returncode == 2 and "does not match the catalogue" in tampered.stderr
    assert list((tmp_path / "out").iterdir()) == []  # checked for writing before the model loads; nothing written
    assert json.loads(catalogue.read_text())["models"][0]["name"] == "random-hafb"

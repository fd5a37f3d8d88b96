"""SceneLogic (what the module's Logic is): console segment/grade and the GUI's background runs, on a real
headless MRML scene with a real case."""

import sys
import time

import numpy as np
import pytest
import torch

from BrainTumorFusionLib import networks
from BrainTumorFusionLib.app.logic import SceneLogic
from BrainTumorFusionLib.app.process_runner import BackgroundProcess
from BrainTumorFusionLib.app.scene import MODEL_ATTRIBUTE, MODEL_CHOICE_ATTRIBUTE
from BrainTumorFusionLib.engine.pipeline import Model, Pipeline
from BrainTumorFusionLib.errors import InputError, ModelError
from BrainTumorFusionLib.modalities import MODALITIES
from Testing.plumbing import ConstantGrader, intensity_model, write_catalogue

CASE = "Brats18_CBICA_ABM_1"


@pytest.fixture
def real_nodes(kit, brats_dir):
    """The four modalities of a real case loaded by Slicer, plus a distractor volume."""
    nodes = {role: kit.volumes.AddArchetypeVolume(str(brats_dir / CASE / f"{CASE}_{role}.nii.gz"), f"{CASE}_{role}")
             for role in MODALITIES}
    kit.volumes.AddArchetypeVolume(str(brats_dir / CASE / f"{CASE}_seg.nii.gz"), f"{CASE}_seg", 1)
    return nodes


def test_auto_assign_finds_every_role(kit, real_nodes):
    assert SceneLogic(kit.scene).auto_assign() == real_nodes


def test_segment_in_process_adds_segmentation_and_tables(kit, real_nodes):
    logic = SceneLogic(kit.scene)
    pipeline = Pipeline(device="cpu", segmenter=intensity_model(spacing_mm=(2.0, 2.0, 2.0)),
                        grader=Model("constant", ConstantGrader()), grade=True)
    segmentation = logic.segment(**real_nodes, pipeline=pipeline)
    assert segmentation.GetName() == f"{CASE} tumor"
    assert segmentation.GetSegmentation().GetNumberOfSegments() == 3
    volumes = kit.scene.GetFirstNodeByName(f"{CASE} tumor volumes")
    grade = kit.scene.GetFirstNodeByName(f"{CASE} grade")
    assert volumes.GetNumberOfRows() == 5 and grade.GetNumberOfRows() == 2
    labels = kit.labels_on(segmentation, real_nodes["t1"])
    assert set(np.unique(labels)) <= {0, 1, 2, 4} and (labels > 0).any()


def test_skull_stripping_is_needed_only_for_inputs_with_their_skull(kit, real_nodes):
    """The GUI asks to install deepbet only when this says so."""
    assert not SceneLogic.needs_skull_stripping("auto", **real_nodes)  # BraTS inputs are skull-stripped
    assert SceneLogic.needs_skull_stripping("on", **real_nodes)
    assert not SceneLogic.needs_skull_stripping("off", **real_nodes)
    head = real_nodes["t1"]
    import slicer.util

    voxels = slicer.util.arrayFromVolume(head)
    saved = voxels.copy()
    voxels[voxels == 0] = 5  # no zero background any more: looks like a head with its skull and air
    slicer.util.arrayFromVolumeModified(head)
    try:
        assert SceneLogic.needs_skull_stripping("auto", t1=head)
    finally:
        voxels[:] = saved
        slicer.util.arrayFromVolumeModified(head)


def test_grade_returns_probabilities_and_changes_nothing(kit, real_nodes):
    before = kit.state()
    probabilities = SceneLogic(kit.scene).grade(**real_nodes, grader=Model("constant", ConstantGrader()))
    assert set(probabilities) == {"HGG", "LGG"} and probabilities["HGG"] > probabilities["LGG"]
    assert kit.state() == before


def test_bad_input_leaves_the_scene_unchanged(kit, real_nodes):
    logic = SceneLogic(kit.scene)
    before = kit.state()
    pipeline = Pipeline(device="cpu", segmenter=intensity_model())
    with pytest.raises(InputError, match="selected both as T1 and as T2"):
        logic.segment(t1=real_nodes["t1"], t1ce=real_nodes["t1ce"], t2=real_nodes["t1"], flair=real_nodes["flair"],
                      pipeline=pipeline)
    with pytest.raises(InputError, match="needs T1ce"):
        logic.segment(t1=real_nodes["t1"], t2=real_nodes["t2"], flair=real_nodes["flair"], pipeline=pipeline)
    with pytest.raises(InputError, match="No input volume"):
        logic.segment(pipeline=pipeline)
    with pytest.raises(InputError, match="Unknown test-time augmentation setting 'sideways': choose one of off, mirror."):
        logic.segment(**real_nodes, tta="sideways")  # refused before any model loads
    assert kit.state() == before


@pytest.fixture
def random_catalogue(tmp_path):
    """A randomly initialised compact hafb in a user catalogue: plumbing only, never shipped."""
    torch.manual_seed(0)
    network = networks.build("hafb", widths=(4, 8, 8, 16, 16))
    return write_catalogue(tmp_path, "hafb", network.state_dict(), name="random-hafb",
                           config={"widths": [4, 8, 8, 16, 16]}, spacing_mm=[2.0, 2.0, 2.0], patch_size=[64, 64, 64])


def wait(run, seconds=240):
    """(error or None, log lines, progress reports) once the run ended."""
    lines, progress, deadline = [], [], time.time() + seconds
    while time.time() < deadline:
        update = run.poll()
        lines += update.lines
        progress += [update.progress] if update.progress else []
        if update.finished:
            return update.error, lines, progress
        time.sleep(0.1)
    run.cancel()
    raise AssertionError(f"background run did not finish: {lines[-5:]}")


def test_background_run_gives_the_same_result_as_in_process(kit, real_nodes, random_catalogue):
    logic = SceneLogic(kit.scene, python_executable=sys.executable)
    run = logic.start_segmentation(**real_nodes, model="random-hafb", device="cpu",
                                   catalogue_files=[random_catalogue])
    error, lines, progress = wait(run)
    assert error is None, lines
    assert run.result == {"status": "done"} and run.process.process.returncode == 0
    assert progress[-1] == (1.0, "Done")
    assert not any(line.startswith(("PROGRESS", "RESULT")) for line in lines)
    segmentation, volumes, grade = logic.finish_segmentation(run)
    assert not run.folder.exists() and grade is None
    in_process = logic.segment(**real_nodes, model="random-hafb", device="cpu", catalogue_files=[random_catalogue])
    reference = real_nodes["t1"]
    np.testing.assert_array_equal(kit.labels_on(segmentation, reference), kit.labels_on(in_process, reference))


def test_the_default_auto_model_records_its_choice_on_every_node(kit, real_nodes):
    """The GUI's default: a background run with the shipped "auto" table, without FLAIR."""
    from BrainTumorFusionLib.engine.auto_choice import choose, describe
    from BrainTumorFusionLib.engine.catalogue import Catalogue

    logic = SceneLogic(kit.scene, python_executable=sys.executable)
    run = logic.start_segmentation(t1=real_nodes["t1"], t1ce=real_nodes["t1ce"], t2=real_nodes["t2"], device="cpu")
    error, lines, _ = wait(run)
    assert error is None, lines
    nodes = [node for node in logic.finish_segmentation(run) if node is not None]
    chosen, _ = choose(Catalogue.load(), (True, True, True, False), on_cpu=True)
    for node in nodes:
        assert node.GetAttribute(MODEL_ATTRIBUTE) == describe(chosen)
        assert node.GetAttribute(MODEL_CHOICE_ATTRIBUTE).startswith(f"auto: {describe(chosen)}: ")


def test_cancelled_background_run_leaves_scene_and_disk_clean(kit, real_nodes, random_catalogue):
    logic = SceneLogic(kit.scene, python_executable=sys.executable)
    before = kit.state()
    run = logic.start_segmentation(**real_nodes, model="random-hafb", catalogue_files=[random_catalogue])
    time.sleep(1.0)
    run.cancel()
    assert run.process.process.returncode is not None and not run.folder.exists()
    assert kit.state() == before


@pytest.fixture
def ensemble_catalogue(tmp_path):
    """Two randomly initialised compact hafb networks in a user catalogue, on different coarse grids (fast):
    plumbing only, never shipped."""
    for seed, (name, spacing) in enumerate((("random-a", 4.0), ("random-b", 3.0))):
        torch.manual_seed(seed)
        network = networks.build("hafb", widths=(4, 8, 8, 16, 16))
        path = write_catalogue(tmp_path, "hafb", network.state_dict(), name=name, config={"widths": [4, 8, 8, 16, 16]},
                               spacing_mm=[spacing] * 3, patch_size=[32, 32, 32])
    return path


def test_ensemble_background_run_matches_in_process_and_records_the_members(kit, real_nodes, ensemble_catalogue):
    logic = SceneLogic(kit.scene, python_executable=sys.executable)
    run = logic.start_segmentation(**real_nodes, model="ensemble", members="random-a, random-b", device="cpu",
                                   catalogue_files=[ensemble_catalogue])
    error, lines, progress = wait(run)
    assert error is None, lines
    assert any("(random-b, 2 of 2)" in message for _, message in progress) and progress[-1][0] == 1.0
    segmentation, volumes, _ = logic.finish_segmentation(run)
    in_process = logic.segment(**real_nodes, model="ensemble", members=["random-a", "random-b"], device="cpu",
                               catalogue_files=[ensemble_catalogue])
    for node in (segmentation, volumes, in_process):
        assert node.GetAttribute(MODEL_ATTRIBUTE) == "ensemble (random-a + random-b)"
    reference = real_nodes["t1"]
    np.testing.assert_array_equal(kit.labels_on(segmentation, reference), kit.labels_on(in_process, reference))


def test_ensemble_errors_leave_the_scene_unchanged(kit, real_nodes, ensemble_catalogue):
    logic = SceneLogic(kit.scene, python_executable=sys.executable)
    before = kit.state()
    catalogue = {"catalogue_files": [ensemble_catalogue], "device": "cpu", "model": "ensemble"}
    with pytest.raises(ModelError, match="at least 2 segmentation models, got 1"):
        logic.segment(**real_nodes, members="random-a", **catalogue)
    with pytest.raises(ModelError, match="Unknown ensemble member 'nope'. Available segmentation models: .*"
                                         "random-a, random-b"):
        logic.start_segmentation(**real_nodes, members="random-a,nope", **catalogue)  # no process is started
    no_t1ce = {role: node for role, node in real_nodes.items() if role != "t1ce"}
    with pytest.raises(InputError, match="'random-a' needs T1ce; 'random-b' needs T1ce. Leave random-a, "
                                         "random-b out of the members, or give it .* or select it in the module."):
        logic.segment(**no_t1ce, members="random-a,random-b", **catalogue)
    assert kit.state() == before


def test_a_failed_background_run_reports_why_and_adds_nothing(kit, real_nodes, random_catalogue):
    """The library's own command: its RESULT line carries the error the widget shows, and the exit status agrees."""
    logic = SceneLogic(kit.scene, python_executable=sys.executable)
    before = kit.state()
    run = logic.start_segmentation(**real_nodes, model="nope", device="cpu", catalogue_files=[random_catalogue])
    error, lines, _ = wait(run)
    assert error.startswith("Unknown segmentation model 'nope'. Available: ")
    assert run.result["kind"] == "ModelError" and run.process.process.returncode == 2
    assert any(line.startswith("ERROR: Unknown segmentation model") for line in lines)
    run.cleanup()
    assert not run.folder.exists() and kit.state() == before


def test_a_process_that_ends_without_a_result_line_failed(kit):
    """Killed or crashed before its RESULT line: a failure, whatever the exit status."""
    t1 = kit.add_volume(np.ones((4, 5, 6), np.float32), np.eye(4), "small_t1")
    for script in ("print('PROGRESS 0.500 half'); import os; os._exit(3)", "print('no result line')"):
        logic = SceneLogic(kit.scene, process_factory=lambda command, script=script: BackgroundProcess(
            [sys.executable, "-c", script]))
        run = logic.start_segmentation(t1=t1)
        error, lines, progress = wait(run, 60)
        assert error.startswith("The segmentation process ended (exit status ")
        assert error.endswith("without reporting a result; see the log.")
        run.cleanup()

"""The module's widget (BrainTumorFusion.py) on a real headless MRML scene: role selectors, Apply/Cancel, progress,
failure and success. Its logic is the module's own, given through the widget's logic factory; the background
process is a real subprocess (predict_stand_in.py: the library's `predict` command with a stand-in network).
Only what the slicer-core wheel lacks is stubbed (gui_stubs.py: qt, Slicer's Qt-based Python modules, slicer.app).
"""

import importlib.util
import io
import logging
import sys
import time
import types
import unittest
from pathlib import Path

import numpy as np
import pytest

from BrainTumorFusionLib.app.cli import build_parser
from BrainTumorFusionLib.app.process_runner import BackgroundProcess
from BrainTumorFusionLib.app.scene import MODEL_ATTRIBUTE, WARNINGS_ATTRIBUTE
from BrainTumorFusionLib.engine.pipeline import Pipeline
from BrainTumorFusionLib.modalities import MODALITIES
from BrainTumorFusionLib.options import SegmentationOptions
from Testing.plumbing import intensity_model
from Testing.realdata import MODULE_DIR
from Testing.slicer import gui_stubs

STAND_IN = Path(__file__).with_name("predict_stand_in.py")
MATRIX = np.array([[-1.2, 0, 0, 40.0], [0, -1.0, 0, 20.0], [0, 0, 1.5, -30.0], [0, 0, 0, 1]])
SHAPE = (24, 28, 32)


def synthetic_volumes():
    """Brain-like volumes: zero background, a noisy brain box, a bright lesion on FLAIR and its core on T1ce (the
    same block on both would make them near-identical images, which are refused)."""
    rng = np.random.default_rng(3)
    volumes = {}
    for role in MODALITIES:
        array = np.zeros(SHAPE, np.float32)
        array[2:-2, 3:-3, 3:-3] = 100 + 10 * rng.random((SHAPE[0] - 4, SHAPE[1] - 6, SHAPE[2] - 6))
        if role == "flair":
            array[9:15, 10:17, 11:19] = 300
        if role == "t1ce":
            array[10:14, 11:16, 12:18] = 400
        volumes[role] = array
    return volumes


@pytest.fixture
def module(kit, monkeypatch):
    """BrainTumorFusion.py imported with the stand-ins for what the wheel lacks."""
    gui_stubs.install(monkeypatch, kit.app)
    spec = importlib.util.spec_from_file_location("BrainTumorFusion", MODULE_DIR / "BrainTumorFusion.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "BrainTumorFusion", module)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def hold(tmp_path):
    """While this file exists the background process waits past half way (see predict_stand_in.py)."""
    path = tmp_path / "hold"
    path.touch()
    return path


@pytest.fixture
def processes():
    """The background processes the widget's logic starts: the library's `predict` arguments, run by
    predict_stand_in.py in a real subprocess."""
    return []


@pytest.fixture
def widget(kit, module, hold, processes):
    def process_factory(command):
        assert Path(command[1]).name == "__main__.py" and command[2] == "predict"  # the library's command
        processes.append(BackgroundProcess([sys.executable, str(STAND_IN), str(hold), *command[2:]]))
        return processes[-1]

    def make_logic():
        return module.BrainTumorFusionLogic(scene=kit.scene, python_executable=sys.executable,
                                            process_factory=process_factory)

    widget = module.BrainTumorFusionWidget(logicFactory=make_logic)
    yield widget
    widget.cleanup()


def add_case(kit, roles=MODALITIES, name="Case7"):
    volumes = synthetic_volumes()
    return {role: kit.add_volume(volumes[role], MATRIX, f"{name}_{role}") for role in roles}


def until(predicate, seconds=180):
    """Run the event loop until predicate() holds."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        gui_stubs.process_events()
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("timed out waiting for the widget")


def roles(widget):
    return {role: getattr(widget._parameterNode, role) for role in MODALITIES}


def test_selectors_fill_from_names_and_follow_new_volumes(kit, widget):
    nodes = add_case(kit, roles=("t1", "t1ce", "t2"))
    kit.add_volume(np.ones(SHAPE, np.uint8), MATRIX, "Case7_seg")  # not a modality name: left alone
    widget.setup()
    assert roles(widget) == {"t1": nodes["t1"], "t1ce": nodes["t1ce"], "t2": nodes["t2"], "flair": None}
    assert widget.ui.applyButton.enabled and widget.ui.applyButton.text == "Apply"
    assert widget.ui.modelComboBox.currentText == widget._parameterNode.model == "auto"  # the default
    assert not widget.ui.membersLineEdit.visible
    widget.ui.modelComboBox.setCurrentText("ensemble")
    assert widget.ui.membersLineEdit.visible

    # A volume loaded later takes its empty role once its name is set (next turn of the event loop).
    flair = kit.add_volume(synthetic_volumes()["flair"], MATRIX, "Case7_flair")
    gui_stubs.process_events()
    assert roles(widget)["flair"] is flair

    # The user's choices stay; a volume already in a role does not take a second one.
    widget._parameterNode.t1 = None
    widget._parameterNode.t2 = nodes["t1"]
    widget.ui.autoAssignButton.click()
    assert roles(widget) == {"t1": None, "t1ce": nodes["t1ce"], "t2": nodes["t1"], "flair": flair}

    for role in MODALITIES:
        setattr(widget._parameterNode, role, None)
    assert not widget.ui.applyButton.enabled


def test_apply_shows_progress_then_loads_the_result(kit, widget, processes, hold, vtk_messages):
    nodes = add_case(kit)
    widget.setup()
    widget.ui.applyButton.click()
    assert widget.ui.applyButton.text == "Cancel" and not widget.ui.inputsCollapsibleButton.enabled
    # The stand-in waits at "Postprocessing" (90 %); the last "Segmenting" report reaches 90 % just before it.
    until(lambda: widget.ui.statusLabel.text == "Postprocessing")
    assert widget.ui.progressBar.value == 90
    run = widget.run
    hold.unlink()
    until(lambda: widget.run is None)

    assert processes[0].process.returncode == 0 and not run.folder.exists()
    assert widget.ui.applyButton.text == "Apply" and widget.ui.inputsCollapsibleButton.enabled
    segmentation = kit.scene.GetFirstNodeByName("Case7 tumor")
    volumes = kit.scene.GetFirstNodeByName("Case7 tumor volumes")
    assert segmentation.GetAttribute(MODEL_ATTRIBUTE) == "intensity"
    # The result's plausibility warnings (this small synthetic case has several) reach the status and the log.
    warnings = segmentation.GetAttribute(WARNINGS_ATTRIBUTE).splitlines()
    assert any(warning.startswith("The non-zero part of the images is only 21 mL") for warning in warnings)
    assert widget.ui.statusLabel.text == f"Done: Case7 tumor (intensity) with {len(warnings)} warning(s): see the log."
    assert all(f"Warning: {warning}" in widget.ui.logTextEdit.toPlainText() for warning in warnings)
    assert kit.app.GetSelectionNode().GetActiveTableID() == volumes.GetID()
    # The same labels as the same stand-in run in this process.
    in_process = widget.logic.segment(**nodes, pipeline=Pipeline(device="cpu", segmenter=intensity_model()))
    labels = kit.labels_on(segmentation, nodes["t1"])
    assert (labels > 0).any()
    np.testing.assert_array_equal(labels, kit.labels_on(in_process, nodes["t1"]))
    vtk_messages()


def test_cancel_kills_the_process_and_leaves_the_scene_untouched(kit, widget, processes):
    add_case(kit)
    widget.setup()
    before = kit.state()
    widget.ui.applyButton.click()
    until(lambda: widget.ui.statusLabel.text == "Postprocessing")  # held there: a run in flight
    assert widget.ui.progressBar.value == 90
    run = widget.run
    widget.ui.applyButton.click()  # now labelled Cancel
    process = processes[0]
    assert process.cancelled and process.process.returncode is not None and process.process.returncode != 0
    assert widget.run is None and not run.folder.exists()
    assert widget.ui.applyButton.text == "Apply" and widget.ui.progressBar.value == 0
    assert widget.ui.statusLabel.text == "Cancelled; the scene was not changed."
    gui_stubs.process_events()
    assert kit.state() == before


def test_a_failure_reported_by_the_process_is_shown(kit, widget, processes, caplog):
    add_case(kit)
    widget.setup()
    widget._parameterNode.t1ce = None  # the stand-in network needs all four
    before = kit.state()
    with caplog.at_level(logging.ERROR):
        widget.ui.applyButton.click()
        until(lambda: widget.run is None)
    message = ("Model 'intensity' needs T1ce, which is missing: give it (--t1ce, or <id>_t1ce in the case folder) "
               "or select it in the module")
    assert processes[0].process.returncode == 2
    assert widget.ui.statusLabel.text.startswith(f"Failed: {message}")
    assert any(record.getMessage().startswith(message) for record in caplog.records)  # slicer.util.errorDisplay
    assert f"ERROR: {message}" in widget.ui.logTextEdit.toPlainText()  # stderr stays in the log
    assert "RESULT" not in widget.ui.logTextEdit.toPlainText()
    assert widget.ui.applyButton.text == "Apply" and kit.state() == before


def test_every_gui_option_reaches_the_background_process(kit, widget, processes, hold):
    add_case(kit)
    widget.setup()
    assert widget.ui.ttaComboBox.currentText == widget._parameterNode.tta == "off"  # the default
    assert widget.ui.ttaComboBox.items == ["off", "mirror"]  # the choice lists are the options' own
    assert widget.ui.referenceComboBox.items == list(MODALITIES)
    chosen = {"tta": "mirror", "reference": "t2", "register": "off", "skull_strip": "off", "precision": "fp32",
              "device": "cpu"}
    for name, value in chosen.items():  # what choosing them does in Slicer (bound by SlicerParameterName)
        setattr(widget._parameterNode, name, value)
    hold.unlink()
    widget.ui.applyButton.click()
    until(lambda: widget.run is None)
    arguments = processes[0].process.args[3:]  # after python, the stand-in and its hold file
    received = SegmentationOptions.from_args(build_parser().parse_args(arguments))
    assert received == SegmentationOptions().with_keywords(**chosen)
    assert processes[0].process.returncode == 0 and kit.scene.GetFirstNodeByName("Case7 tumor")


@pytest.mark.parametrize("version, refused", [((5, 12), False), ((5, 8), True)])
def test_the_module_says_at_load_which_slicer_it_needs(module, monkeypatch, version, refused):
    monkeypatch.setattr(module.slicer.app, "majorVersion", version[0], raising=False)
    monkeypatch.setattr(module.slicer.app, "minorVersion", version[1], raising=False)
    parent = types.SimpleNamespace()
    module.BrainTumorFusion(parent)
    assert parent.helpText.startswith("<b>BrainTumorFusion needs 3D Slicer 5.12 or newer") == refused
    assert "not for clinical diagnosis" in parent.helpText


def test_apply_on_an_unsupported_slicer_installs_nothing_and_runs_nothing(kit, widget, processes, monkeypatch,
                                                                          caplog):
    add_case(kit)
    widget.setup()
    monkeypatch.setattr(widget.logic, "start_segmentation", lambda **options: pytest.fail("a run was started"))
    monkeypatch.setattr(gui_stubs.slicer.app, "minorVersion", 8, raising=False)
    before = kit.state()
    with caplog.at_level(logging.ERROR):
        widget.ui.applyButton.click()
    assert any("needs 3D Slicer 5.12 or newer" in record.getMessage() and "this is Slicer 5.8" in record.getMessage()
               for record in caplog.records)  # slicer.util.errorDisplay
    assert processes == [] and widget.run is None and kit.state() == before


def test_the_module_self_test_passes(kit, module, monkeypatch):
    """BrainTumorFusionTest, what Slicer's extension CI and `Slicer --testing` run: the dependency check, a random
    network, and the shipped default model end to end, on this test's headless scene."""
    monkeypatch.setattr(module.slicer, "mrmlScene", kit.scene, raising=False)
    result = unittest.TextTestRunner(stream=io.StringIO(), verbosity=0).run(module.BrainTumorFusionTest("runTest"))
    assert result.wasSuccessful(), result.errors + result.failures
    assert kit.scene.GetFirstNodeByName("Synthetic tumor volumes") is not None


def test_a_prior_segmentation_is_compared_after_the_run(kit, widget, processes, hold):
    """With "Compare with prior", the new exam is compared with the prior's segmentation once it is loaded: the
    response table becomes the active table and the status line carries the category with its caveat."""
    add_case(kit)
    widget.setup()
    hold.unlink()
    widget.ui.applyButton.click()
    until(lambda: widget.run is None)
    prior = kit.scene.GetFirstNodeByName("Case7 tumor")
    prior.SetName("Case7 prior tumor")
    widget._parameterNode.prior = prior
    widget.ui.applyButton.click()
    until(lambda: widget.run is None)
    response = kit.scene.GetFirstNodeByName("Case7 tumor response")
    assert response is not None
    assert kit.app.GetSelectionNode().GetActiveTableID() == response.GetID()
    assert "stable disease (imaging only: clinical criteria (steroids, clinical status) not assessed)" in \
        widget.ui.statusLabel.text  # the same exam twice
    log = widget.ui.logTextEdit.toPlainText()
    assert "RANO: " in log and "Response: " in log

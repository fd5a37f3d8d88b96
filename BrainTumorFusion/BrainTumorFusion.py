"""BrainTumorFusion: brain tumor segmentation and glioma grading on T1, T1ce, T2 and FLAIR.

The only file that imports qt: a thin shell over the Qt-free BrainTumorFusionLib.
"""

import logging
import os
import shutil

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from BrainTumorFusionLib.app.dependencies import unsupported_reason
from BrainTumorFusionLib.app.logic import SceneLogic
from BrainTumorFusionLib.app.process_runner import BackgroundProcess
from BrainTumorFusionLib.app.scene import MODEL_ATTRIBUTE, MODEL_CHOICE_ATTRIBUTE, WARNINGS_ATTRIBUTE
from BrainTumorFusionLib.choices import DEFAULT_MODEL, ENSEMBLE
from BrainTumorFusionLib.engine.catalogue import Catalogue
from BrainTumorFusionLib.errors import BrainTumorFusionError
from BrainTumorFusionLib.modalities import MODALITIES
from BrainTumorFusionLib.options import GUI_CHOICES, GUI_DEFAULTS, GUI_FIELDS, SegmentationOptions


class BrainTumorFusion(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Brain Tumor Fusion")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.contributors = ["BrainTumorFusion developers"]
        self.parent.helpText = _(
            "Segments a brain tumor into necrotic/non-enhancing core, edema and enhancing tumor from four "
            "co-registered MRI volumes (T1, T1ce, T2, FLAIR), and optionally grades the glioma (HGG/LGG).<br>"
            "<b>GUI</b>: pick the four volumes (filled from their names), a model and a device, press Apply. "
            "Model 'ensemble' averages the models listed in Members (empty: the default ones shown there).<br>"
            "The result is a segmentation node '&lt;case&gt; tumor', a table of volumes (mL) and a table of RANO "
            "measurements (each enhancing lesion's diameters, measurable or not, the SPD of up to three target "
            "lesions), whose target diameters are drawn as lines: move a line's end and the table follows. "
            "'Compare with prior' (a segmentation of an earlier exam) adds a table of changes and the imaging-only "
            "response category.<br>"
            "<b>Python console</b>: <code>logic = slicer.util.getModuleLogic('BrainTumorFusion')</code>; "
            "<code>seg = logic.segment(t1=n1, t1ce=n2, t2=n3, flair=n4, model='auto', device='auto', "
            "precision='auto')</code> "
            "(or <code>model='ensemble', members='hafb,segresnet'</code>); "
            "<code>logic.grade(t1=n1, t1ce=n2, t2=n3, flair=n4)</code>; <code>logic.measure(seg)</code>; "
            "<code>logic.compare(prior_seg, seg)</code> (either exam may be a dict of four volumes instead).<br>"
            "<b>Batch</b>: <code>Slicer --no-main-window --python-script "
            "&lt;module&gt;/BrainTumorFusionLib/__main__.py segment --input-dir DIR --output-dir OUT</code>; "
            "<code>... compare --baseline DIR --follow-up DIR --output-dir OUT</code>.<br>"
            "For research use only, not for clinical diagnosis. Code: Apache-2.0. The shipped weights were trained "
            "on BraTS 2018/2021 data, which are for research use (see the extension's README).")
        reason = unsupported_reason(slicerVersion())
        if reason:  # said at load, before anything is installed; Apply refuses with the same words
            logging.error(reason)
            self.parent.helpText = f"<b>{reason}</b><br>" + self.parent.helpText
        self.parent.acknowledgementText = _(
            "Networks implemented in 3D from: HAFB-Net (Self-supervised multi-modal hybrid fusion network, "
            "IEEE JBHI 2022); MISSU (Wang et al., arXiv:2206.00902); TransFuse (Zhang et al., MICCAI 2021); "
            "SwinFUSE (arXiv:2405.12781); cross-modality guided glioma grading (arXiv:2401.09029). Trained on "
            "BraTS data: Menze et al., IEEE TMI 2015; Bakas et al., Scientific Data 2017; Bakas et al., "
            "arXiv:1811.02629.")


# The four input volumes, a prior exam's segmentation to compare with, and the run's options (options.GUI_FIELDS,
# each bound to a widget in the .ui file).
BrainTumorFusionParameterNode = parameterNodeWrapper(type("BrainTumorFusionParameterNode", (), {
    "__annotations__": {**{role: vtkMRMLScalarVolumeNode for role in MODALITIES}, "prior": vtkMRMLSegmentationNode,
                        **GUI_FIELDS}, **GUI_DEFAULTS}))


class BrainTumorFusionWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None, logicFactory=None):
        """logicFactory() makes the logic in setup() (default BrainTumorFusionLogic); tests pass their own."""
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logicFactory = logicFactory or BrainTumorFusionLogic
        self.logic = None
        self._parameterNode = None
        self._guiObservation = None
        self.run = None
        self.timer = qt.QTimer()
        self.timer.setInterval(200)
        self.timer.connect("timeout()", self.onPoll)

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/BrainTumorFusion.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = self.logicFactory()
        for name, choices in GUI_CHOICES.items():  # the options' own choice lists; skull_strip -> skullStripComboBox
            camel = "".join(part.capitalize() if i else part for i, part in enumerate(name.split("_")))
            getattr(self.ui, f"{camel}ComboBox").addItems(choices)
        self.fillModels()
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.NodeAddedEvent, self.onNodeAdded)
        self.ui.applyButton.connect("clicked(bool)", self.onApply)
        self.ui.autoAssignButton.connect("clicked(bool)", self.assignFromNames)
        self.ui.modelComboBox.connect("currentTextChanged(QString)", self.showMembers)
        self.initializeParameterNode()
        self.showMembers()

    def fillModels(self):
        try:
            catalogue = Catalogue.load()
        except BrainTumorFusionError as error:
            self.ui.modelInfoLabel.text = str(error)
            return
        names = catalogue.names("segmentation")
        self.ui.modelComboBox.addItems(catalogue.segmentation_choices())
        self.ui.membersLineEdit.placeholderText = ", ".join(catalogue.default_ensemble())
        self.ui.modelInfoLabel.text = "" if names else _(
            "No trained model is installed yet: reinstall the extension or add a model catalogue.")
        graders = catalogue.names("grading")
        self.ui.gradeCheckBox.enabled = bool(graders)
        # A grader's caveat (e.g. too few low-grade training cases) shows where the user turns grading on.
        self.ui.gradeCheckBox.toolTip = "\n".join(
            f"{name}: {catalogue.entries[name].details['notes']}" for name in graders
            if catalogue.entries[name].details.get("notes"))

    def showMembers(self, model=None):
        """The member list only matters, and is only shown, for the ensemble."""
        ensemble = self.ui.modelComboBox.currentText == ENSEMBLE
        self.ui.membersLabel.visible = ensemble
        self.ui.membersLineEdit.visible = ensemble

    def cleanup(self):
        self.cancelRun()
        self.removeObservers()

    def enter(self):
        self.initializeParameterNode()

    def exit(self):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._guiObservation)
            self._guiObservation = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateApplyButton)

    def onSceneStartClose(self, caller, event):
        self.cancelRun()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    @vtk.calldata_type(vtk.VTK_OBJECT)
    def onNodeAdded(self, caller, event, node):
        if isinstance(node, vtkMRMLScalarVolumeNode) and self._parameterNode:
            qt.QTimer.singleShot(0, self.assignFromNames)  # the node's name is set after it is added

    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())
        self.assignFromNames()

    def assignFromNames(self):
        """Fill only the empty roles, with volumes not used in another role."""
        if not self._parameterNode:
            return
        current = {role: getattr(self._parameterNode, role) for role in MODALITIES}
        for role, node in self.logic.fill_empty_roles(current).items():
            if node is not current[role]:
                setattr(self._parameterNode, role, node)

    def setParameterNode(self, inputParameterNode):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._guiObservation)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateApplyButton)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._guiObservation = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateApplyButton)
            self.updateApplyButton()

    def updateApplyButton(self, caller=None, event=None):
        if self.run:
            return
        ready = self._parameterNode and any(getattr(self._parameterNode, r) for r in MODALITIES) \
            and self.ui.modelComboBox.count > 0
        self.ui.applyButton.enabled = bool(ready)
        self.ui.applyButton.toolTip = _("Segment the tumor") if ready else _(
            "Select the input volumes and a model first")

    def onApply(self):
        if self.run:
            self.cancelRun()
            self.ui.statusLabel.text = _("Cancelled; the scene was not changed.")
            return
        from BrainTumorFusionLib.app.dependencies import ensure_installed, ensure_skull_stripping_installed

        p = self._parameterNode
        nodes = {role: getattr(p, role) for role in MODALITIES}
        try:
            options = SegmentationOptions.from_gui(**{name: getattr(p, name) for name in GUI_FIELDS})
            ensure_installed(slicerVersion(), confirm=slicer.util.confirmOkCancelDisplay)
            if self.logic.needs_skull_stripping(options.skull_strip, **nodes):
                ensure_skull_stripping_installed(confirm=slicer.util.confirmOkCancelDisplay)
            self.run = self.logic.start_segmentation(**nodes, options=options)
        except BrainTumorFusionError as error:
            slicer.util.errorDisplay(str(error))
            return
        self.ui.logTextEdit.clear()
        self.setRunning(True)
        self.timer.start()

    def onPoll(self):
        update = self.run.poll()
        for line in update.lines:
            self.ui.logTextEdit.appendPlainText(line)
        if update.progress:
            self.ui.progressBar.value = int(update.progress[0] * 100)
            self.ui.statusLabel.text = update.progress[1]
        if not update.finished:
            return
        run, self.run = self.run, None
        self.timer.stop()
        self.setRunning(False)
        if update.error:  # the process's RESULT line (or its exit status) says it failed
            run.cleanup()
            self.ui.statusLabel.text = _("Failed: {error}").format(error=update.error)
            slicer.util.errorDisplay(update.error)
            return
        with slicer.util.tryWithErrorDisplay(_("Could not import the result."), waitCursor=True):
            segmentation, volumes, grade = self.logic.finish_segmentation(run)
            segmentation.CreateClosedSurfaceRepresentation()
            status = _("Done: {name} ({model})").format(name=segmentation.GetName(),
                                                          model=segmentation.GetAttribute(MODEL_ATTRIBUTE))
            choice = segmentation.GetAttribute(MODEL_CHOICE_ATTRIBUTE)
            if choice:  # the model "auto": what it chose and why, on the status line and in the log
                self.ui.logTextEdit.appendPlainText(_("Model choice: {choice}").format(choice=choice))
                status += " - " + choice
            warnings = (segmentation.GetAttribute(WARNINGS_ATTRIBUTE) or "").splitlines()
            for warning in warnings:
                self.ui.logTextEdit.appendPlainText(_("Warning: {warning}").format(warning=warning))
            if warnings:
                status += " " + _("with {count} warning(s): see the log.").format(count=len(warnings))
            table = grade or volumes
            measurements = self.logic.measurement_links[segmentation.GetID()].measurements
            self.ui.logTextEdit.appendPlainText(_("RANO: {count} enhancing lesion(s), {measurable} measurable, SPD "
                                                  "{spd:g} mm2 (table \"{name} RANO measurements\")").format(
                count=len(measurements.lesions), measurable=measurements.measurable_count, spd=measurements.spd_mm2,
                name=run.case_name))
            prior = self._parameterNode.prior
            if prior is not None:
                self.ui.statusLabel.text = _("Comparing with {prior}...").format(prior=prior.GetName())
                comparison = self.logic.compare(prior, segmentation)
                for reason in comparison.reasons:
                    self.ui.logTextEdit.appendPlainText(_("Response: {reason}").format(reason=reason))
                status += " - " + comparison.label()
                table = slicer.mrmlScene.GetFirstNodeByName(f"{segmentation.GetName()} response")
            self.ui.statusLabel.text = status
            slicer.app.applicationLogic().GetSelectionNode().SetActiveTableID(table.GetID())

    def cancelRun(self):
        if self.run:
            self.timer.stop()
            self.run.cancel()
            self.run = None
            self.setRunning(False)

    def setRunning(self, running):
        self.ui.applyButton.text = _("Cancel") if running else _("Apply")
        self.ui.progressBar.value = 0
        for widget in (self.ui.inputsCollapsibleButton, self.ui.modelCollapsibleButton):
            widget.enabled = not running
        self.updateApplyButton()


def slicerVersion():
    return slicer.app.majorVersion, slicer.app.minorVersion


def pythonSlicerExecutable():
    """Slicer's own Python interpreter, which runs the background process (never the Slicer app itself)."""
    name = "PythonSlicer.exe" if os.name == "nt" else "PythonSlicer"
    return shutil.which("PythonSlicer") or os.path.join(slicer.app.slicerHome, "bin", name)


class BrainTumorFusionLogic(ScriptedLoadableModuleLogic, SceneLogic):
    """Console API: segment(...) returns the segmentation node; measure(segmentation) its RANO measurements;
    compare(prior, follow_up) the response; grade(...) the probabilities.

    By default it works on slicer.mrmlScene and runs the GUI's background process with PythonSlicer."""

    def __init__(self, scene=None, python_executable=None, process_factory=BackgroundProcess):
        ScriptedLoadableModuleLogic.__init__(self)
        SceneLogic.__init__(self, slicer.mrmlScene if scene is None else scene,
                            python_executable=python_executable or pythonSlicerExecutable(),
                            process_factory=process_factory)

    def getParameterNode(self):
        return BrainTumorFusionParameterNode(super().getParameterNode())


class BrainTumorFusionTest(ScriptedLoadableModuleTest):
    """What Slicer's extension CI and `Slicer --testing` run: the first-use dependency check, the whole in-process
    pipeline with a randomly initialised compact network, and the shipped default model end to end on a synthetic
    case (plumbing, not Dice: the shipped weights are scored on real cases by the pytest suites)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        for test in (self.test_dependencies, self.test_segment_synthetic_case, self.test_default_model_end_to_end):
            self.setUp()
            test()

    def test_dependencies(self):
        from BrainTumorFusionLib.app.dependencies import ensure_installed, missing_packages

        self.delayDisplay("Checking (and on first use installing) the Python packages")
        ensure_installed(slicerVersion())
        self.assertEqual(missing_packages(), [])

    def syntheticCase(self):
        """Four brain-like volumes: zero background, a noisy brain box, a bright FLAIR lesion with an enhancing
        core on T1ce."""
        import numpy as np

        rng = np.random.default_rng(0)
        nodes = {}
        for role in MODALITIES:
            array = np.zeros((40, 48, 56), np.float32)
            array[4:-4, 6:-6, 6:-6] = 100 + 10 * rng.random((32, 36, 44))
            if role == "flair":
                array[15:25, 18:28, 20:32] = 300
            if role == "t1ce":
                array[17:23, 20:26, 22:30] = 400
            node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", f"Synthetic_{role}")
            slicer.util.updateVolumeFromArray(node, array)
            nodes[role] = node
        return nodes

    def test_segment_synthetic_case(self):
        from BrainTumorFusionLib import networks
        from BrainTumorFusionLib.engine.pipeline import Model, Pipeline

        self.delayDisplay("Segmenting a synthetic case with a random compact network")
        nodes = self.syntheticCase()
        logic = BrainTumorFusionLogic()
        self.assertEqual(logic.auto_assign(), nodes)
        network = networks.build("hafb", widths=(4, 8, 8, 16, 16))
        pipeline = Pipeline(device="cpu", segmenter=Model("random-hafb", network.eval(), patch_size=(32, 32, 32)))
        segmentation = logic.segment(**nodes, pipeline=pipeline)
        self.assertEqual(segmentation.GetSegmentation().GetNumberOfSegments(), 3)
        self.assertIsNotNone(slicer.mrmlScene.GetFirstNodeByName("Synthetic tumor volumes"))
        self.delayDisplay("Test passed")

    def test_default_model_end_to_end(self):
        self.delayDisplay(f"Segmenting a synthetic case with the shipped default model ({DEFAULT_MODEL})")
        nodes = self.syntheticCase()
        segmentation = BrainTumorFusionLogic().segment(**nodes, model=DEFAULT_MODEL, device="cpu")
        self.assertEqual(segmentation.GetSegmentation().GetNumberOfSegments(), 3)
        self.assertTrue(segmentation.GetAttribute(MODEL_ATTRIBUTE))
        self.assertIsNotNone(slicer.mrmlScene.GetFirstNodeByName("Synthetic tumor volumes"))
        self.delayDisplay("Test passed")

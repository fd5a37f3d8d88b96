"""Scene-level logic shared by the GUI and the Python console: Qt-free, runs headless with slicer-core.

`segment` runs in-process and blocks; `start_segmentation` / `finish_segmentation` run the same pipeline in a
background process (the library's `predict` command on temporary NRRD files) so the GUI stays responsive.
The process is made by the `process_factory` the logic is given (default: BackgroundProcess).
"""

import json
import logging
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional, Sequence, Union

import numpy as np
import SimpleITK as sitk

from ..case import Result
from ..choices import DEFAULT_GRADER, ENSEMBLE
from ..engine.catalogue import Catalogue
from ..errors import InputError
from ..files.file_io import PathLike
from ..measurements.rano import measure
from ..modalities import MODALITIES, assign_roles, case_name_of, present_of
from ..options import SegmentationOptions
from ..preparation.geometry import ijk_to_ras_of, image_from_array
from . import scene as scene_adapter
from .process_runner import BackgroundProcess, library_command, parse_progress, parse_result
from .scene_measurements import labels_from_segmentation, write_comparison, write_measurements

if TYPE_CHECKING:
    import slicer

    from ..engine.pipeline import Model, Pipeline
    from ..measurements.rano import Measurements
    from ..measurements.response import Comparison
    from ..progress import Progress

    MaybeVolume = Optional[slicer.vtkMRMLScalarVolumeNode]
    Exam = Union[slicer.vtkMRMLSegmentationNode, dict[str, slicer.vtkMRMLScalarVolumeNode]]

log = logging.getLogger(__name__)
MEASUREMENTS_ATTRIBUTE = "BrainTumorFusion.MeasurementsTable"  # on a segmentation: its RANO table's node ID

# Makes the background process from its command line; anything with poll() -> (lines, exit code or None)
# and cancel(), as BackgroundProcess.
ProcessFactory = Callable[[Sequence[str]], BackgroundProcess]


@dataclass
class RunUpdate:
    """What one poll of a background run brought."""

    lines: list[str] = field(default_factory=list)  # output for the log (PROGRESS and RESULT lines left out)
    progress: Optional[tuple[float, str]] = None  # the latest (fraction, message)
    finished: bool = False
    error: Optional[str] = None  # once finished: why it failed, or None when it succeeded


class BackgroundSegmentation:
    """A segmentation running in another process: poll() for updates, cancel() to kill it."""

    def __init__(self, process: BackgroundProcess, folder: PathLike,
                 reference_node: "slicer.vtkMRMLScalarVolumeNode", case_name: str,
                 nodes: Optional[dict[str, "MaybeVolume"]] = None):
        self.process, self.folder = process, Path(folder)
        self.reference_node, self.case_name = reference_node, case_name
        self.nodes = nodes or {}  # role -> input node: registered ones go under the registration's transform node
        self.result: Optional[dict[str, Any]] = None  # the RESULT line's fields, once it came

    def poll(self) -> RunUpdate:
        lines, code = self.process.poll()
        update = RunUpdate()
        for line in lines:
            progress, result = parse_progress(line), parse_result(line)
            if progress:
                update.progress = progress
            elif result:
                self.result = result
            else:
                update.lines.append(line)
        if code is not None:
            update.finished = True
            update.error = self._failure(code)
        return update

    def _failure(self, code: int) -> Optional[str]:
        """None when the process said it is done and exited with 0; else what to tell the user."""
        status = (self.result or {}).get("status")
        if status == "done" and code == 0:
            return None
        if status == "failed":
            return self.result.get("error") or self.result.get("kind") or "The segmentation failed; see the log."
        return f"The segmentation process ended (exit status {code}) without reporting a result; see the log."

    def cancel(self) -> None:
        self.process.cancel()
        self.cleanup()

    def cleanup(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


class SceneLogic:
    def __init__(self, scene: "slicer.vtkMRMLScene", python_executable: Optional[str] = None,
                 process_factory: ProcessFactory = BackgroundProcess):
        self.scene = scene
        self.python_executable = python_executable
        self.process_factory = process_factory
        # segmentation node ID -> its measurements table and lines (LinkedMeasurements: the latest measurements)
        self.measurement_links = {}

    def volume_nodes(self) -> list["slicer.vtkMRMLScalarVolumeNode"]:
        """Single-channel scalar volumes: label maps and vector volumes cannot take a modality role."""
        return [node for node in self.scene.GetNodesByClass("vtkMRMLScalarVolumeNode")
                if not node.IsA("vtkMRMLLabelMapVolumeNode") and not node.IsA("vtkMRMLVectorVolumeNode")]

    def auto_assign(self) -> dict[str, "MaybeVolume"]:
        """role -> volume node (or None) from node names; the most specific name pattern wins."""
        nodes = {node.GetName(): node for node in reversed(self.volume_nodes())}
        return {role: nodes.get(name) for role, name in assign_roles(list(nodes)[::-1]).items()}

    def fill_empty_roles(self, current: dict[str, "MaybeVolume"]) -> dict[str, "MaybeVolume"]:
        """`current` (role -> node or None) with its empty roles filled from node names; a node already in a
        role is not given a second one, and roles already chosen are kept."""
        filled = dict(current)
        used = set(current.values()) - {None}
        for role, node in self.auto_assign().items():
            if filled.get(role) is None and node is not None and node not in used:
                filled[role] = node
                used.add(node)
        return filled

    def segment(self, t1: "MaybeVolume" = None, t1ce: "MaybeVolume" = None, t2: "MaybeVolume" = None,
                flair: "MaybeVolume" = None, options: Optional[SegmentationOptions] = None,
                progress: Optional["Progress"] = None, should_cancel: Optional[Callable[[], bool]] = None,
                pipeline: Optional["Pipeline"] = None, **keywords: Any) -> "slicer.vtkMRMLSegmentationNode":
        """Segment in this process; returns the new segmentation node (tables are added beside it).

        options: a SegmentationOptions (default: its defaults); keywords replace single options, e.g. model="hafb",
        model="ensemble" with members=["hafb", "segresnet"], device, precision (auto, fp32, bf16, fp16), tta ("off"
        or "mirror": the mean over the image and its mirror images, several times slower), register (auto: when an
        input lies on another grid or looks misaligned; on; off - the registered volumes are put under transform
        nodes "BrainTumorFusion <role> to <reference>"), reference (the volume whose grid the result lies on, T1ce by
        default), skull_strip (auto: when an input has its skull; on; off), grade, catalogues (own model files)."""
        from ..engine.pipeline import Pipeline
        from ..preparation.registration import ras_transform_to_parent
        from ..progress import share

        options = (options or SegmentationOptions()).with_keywords(**keywords)
        report = progress or (lambda fraction, message: None)
        nodes = {"t1": t1, "t1ce": t1ce, "t2": t2, "flair": flair}
        pipeline = pipeline or Pipeline.from_options(options)
        pipeline.check_modalities(present_of(role for role, node in nodes.items() if node is not None))
        case = scene_adapter.case_from_nodes(**nodes, **options.preparation(), progress=share(report, 0.0, 0.5),
                                             should_cancel=should_cancel)
        # registration and skull stripping, when they ran, had the first half of the progress
        result = pipeline.run(case, share(report, 0.5 if case.stages else 0.0, 1.0), should_cancel)
        for warning in result.warnings:  # the console shows these; the node keeps them (WARNINGS_ATTRIBUTE)
            log.warning(warning)
        segmentation = self.write_result(result, nodes[case.reference_role])[0]
        transforms = {role: ras_transform_to_parent(alignment.transform)
                      for role, alignment in case.alignments.items() if alignment.registered}
        scene_adapter.add_registration_transforms(self.scene, nodes, transforms, case.reference_role)
        return segmentation

    def write_result(self, result: Result, reference_node: "slicer.vtkMRMLScalarVolumeNode"
                     ) -> tuple["slicer.vtkMRMLSegmentationNode", "slicer.vtkMRMLTableNode",
                                Optional["slicer.vtkMRMLTableNode"]]:
        """The result's segmentation and tables, and its RANO measurements (table and target lesions' lines,
        whose edits the table follows); on failure nothing stays added."""
        written = scene_adapter.write_result_to_scene(result, reference_node, self.scene)
        try:
            measurements = result.measurements or measure(result.labels, result.ijk_to_ras)
            link = write_measurements(measurements, self.scene, result.case_name, reference_node)
        except BaseException:
            scene_adapter.remove_nodes(self.scene, written)
            raise
        written[0].SetAttribute(MEASUREMENTS_ATTRIBUTE, link.table.GetID())
        self.measurement_links[written[0].GetID()] = link
        return written

    def measure(self, segmentation: "slicer.vtkMRMLSegmentationNode", add_to_scene: bool = True
                ) -> "Measurements":
        """RANO measurements of a segmentation node of this extension (e.g. after editing it in Segment Editor):
        each enhancing lesion's volume and diameters, measurability, target lesions, SPD, region volumes. With
        add_to_scene, a table "<name> RANO measurements" and the target lesions' diameters as lines are added."""
        labels, ijk_to_ras = labels_from_segmentation(segmentation)
        measurements = measure(labels, ijk_to_ras)
        if add_to_scene:
            link = write_measurements(measurements, self.scene, segmentation.GetName(), segmentation)
            self.measurement_links[segmentation.GetID()] = link
        return measurements

    def compare(self, prior: "Exam", follow_up: "Exam", options: Optional[SegmentationOptions] = None,
                progress: Optional["Progress"] = None, should_cancel: Optional[Callable[[], bool]] = None,
                **keywords: Any) -> "Comparison":
        """Compare a follow-up exam with its prior (baseline). Each exam is a segmentation node of this extension
        (its reference volume, e.g. T1ce, is the exam's image) or a dict of volume nodes by role ({"t1": node,
        ...}), which is segmented first (options and keywords as `segment`). The follow-up is registered rigidly onto
        the prior; adds a table "<follow-up> response" (changes, new and vanished lesions, the imaging-only response
        categories) and returns the measurements.response.Comparison."""
        from ..engine.follow_up import compare_measured
        from ..progress import share

        report = progress or (lambda fraction, message: None)
        exams = []
        for index, exam in enumerate((prior, follow_up)):
            part = share(report, 0.4 * index, 0.4 * (index + 1))
            if isinstance(exam, dict):
                exam = self.segment(**exam, options=options, progress=part, should_cancel=should_cancel, **keywords)
            reference = exam.GetNodeReference(exam.GetReferenceImageGeometryReferenceRole())
            if reference is None:
                raise InputError(f"'{exam.GetName()}' has no reference volume to register with; give the exam's "
                                 "volumes instead, or a segmentation made by Brain Tumor Fusion.")
            labels, ijk_to_ras = labels_from_segmentation(exam)
            image = image_from_array(*scene_adapter.volume_from_node(reference))
            exams.append((exam, measure(labels, ijk_to_ras), image))
        (_, before, before_image), (segmentation, after, after_image) = exams
        comparison, _, warnings = compare_measured(before, before_image, after, after_image,
                                                   share(report, 0.8, 1.0), should_cancel)
        for warning in warnings:
            log.warning(warning)
        write_comparison(comparison, self.scene, segmentation.GetName(), segmentation)
        return comparison

    def grade(self, t1: "MaybeVolume" = None, t1ce: "MaybeVolume" = None, t2: "MaybeVolume" = None,
              flair: "MaybeVolume" = None, model: str = DEFAULT_GRADER, device: str = "auto",
              catalogue_files: Iterable[PathLike] = (), grader: Optional["Model"] = None) -> dict[str, float]:
        """Grade probabilities {"HGG": p, "LGG": p}; adds nothing to the scene."""
        from ..engine.pipeline import Pipeline

        case = scene_adapter.case_from_nodes(t1=t1, t1ce=t1ce, t2=t2, flair=flair)
        pipeline = Pipeline(model=None, device=device, grade=True, grading_model=model, grader=grader,
                            catalogue=Catalogue.load(catalogue_files))
        return pipeline.grade(case)

    @staticmethod
    def _reference(nodes: dict[str, "MaybeVolume"]) -> "slicer.vtkMRMLScalarVolumeNode":
        return next(nodes[role] for role in MODALITIES if nodes.get(role) is not None)

    @staticmethod
    def needs_skull_stripping(skull_strip: str = "auto", **nodes: "MaybeVolume") -> bool:
        """Whether a run with these inputs strips the skull (so deepbet must be installed first): "on", or "auto"
        and some input still has its skull, as the run itself decides (preparation.has_skull)."""
        from ..preparation.geometry import spacing_of
        from ..preparation.inputs import has_skull

        if skull_strip != "auto":
            return skull_strip == "on"
        for role, node in nodes.items():
            if node is not None:
                array, ijk_to_ras = scene_adapter.volume_from_node(node, role)
                if has_skull(array, spacing_of(ijk_to_ras)):
                    return True
        return False

    def start_segmentation(self, t1: "MaybeVolume" = None, t1ce: "MaybeVolume" = None, t2: "MaybeVolume" = None,
                           flair: "MaybeVolume" = None, options: Optional[SegmentationOptions] = None,
                           **keywords: Any) -> BackgroundSegmentation:
        """Write the inputs to temporary NRRD files and start the `predict` command on them (options and keywords:
        as segment)."""
        from ..preparation.inputs import reference_role_of

        options = (options or SegmentationOptions()).with_keywords(**keywords)
        nodes = {"t1": t1, "t1ce": t1ce, "t2": t2, "flair": flair}
        scene_adapter.case_from_nodes(**nodes)  # validate here, so bad input fails before any process starts
        if options.model == ENSEMBLE:  # check the members here too, and pass the defaults on by name
            members = Catalogue.load(options.catalogues).ensemble_members(options.members)
            options = replace(options, members=tuple(entry.name for entry in members))
        folder = Path(tempfile.mkdtemp(prefix="BrainTumorFusion-"))
        arguments = ["predict", "--output-dir", str(folder / "output"), *options.to_argv()]
        for role, node in nodes.items():
            if node is not None:
                array, ijk_to_ras = scene_adapter.volume_from_node(node, role)
                path = folder / f"{role}.nrrd"
                sitk.WriteImage(image_from_array(array, ijk_to_ras), str(path), True)
                arguments += [f"--{role}", str(path)]
        name = case_name_of(self._reference(nodes).GetName())
        arguments += ["--name", name]
        present = [role for role in MODALITIES if nodes[role] is not None]
        reference_node = nodes[reference_role_of(present, options.reference)]
        try:
            process = self.process_factory(library_command(self.python_executable, *arguments))
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return BackgroundSegmentation(process, folder, reference_node, name, nodes)

    def finish_segmentation(self, run: BackgroundSegmentation
                            ) -> tuple["slicer.vtkMRMLSegmentationNode", "slicer.vtkMRMLTableNode",
                                       Optional["slicer.vtkMRMLTableNode"]]:
        """Import a finished background run into the scene; returns (segmentation, volumes table, grade table)."""
        try:
            output = run.folder / "output"
            summary = json.loads((output / "result.json").read_text())
            image = sitk.ReadImage(str(output / "labels.nrrd"))
            result = Result(case_name=run.case_name, labels=sitk.GetArrayFromImage(image).astype(np.uint8),
                            ijk_to_ras=ijk_to_ras_of(image), volumes_ml=summary["volumes_ml"],
                            grade_probabilities=summary["grade_probabilities"], model=summary["model"],
                            model_choice=summary["model_choice"], device=summary["device"],
                            seconds=summary["seconds"], warnings=summary["warnings"])
            written = self.write_result(result, run.reference_node)
            transforms = {entry["role"]: np.array(entry["ras_transform_to_parent"])
                          for entry in summary.get("registration", []) if entry["registered"]}
            scene_adapter.add_registration_transforms(self.scene, run.nodes, transforms,
                                                      summary.get("reference", "t1ce"))
            return written
        finally:
            run.cleanup()

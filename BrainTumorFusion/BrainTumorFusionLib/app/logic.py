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
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional, Sequence

import numpy as np
import SimpleITK as sitk

from ..case import Result
from ..choices import DEFAULT_GRADER, ENSEMBLE
from ..engine.catalogue import Catalogue
from ..files.file_io import PathLike
from ..modalities import MODALITIES, assign_roles, case_name_of, present_of
from ..options import SegmentationOptions
from ..preparation.geometry import ijk_to_ras_of, image_from_array
from . import scene as scene_adapter
from .process_runner import BackgroundProcess, library_command, parse_progress, parse_result

if TYPE_CHECKING:
    import slicer

    from ..engine.pipeline import Model, Pipeline
    from ..progress import Progress

    MaybeVolume = Optional[slicer.vtkMRMLScalarVolumeNode]

log = logging.getLogger(__name__)

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
        segmentation = scene_adapter.write_result_to_scene(result, nodes[case.reference_role], self.scene)[0]
        transforms = {role: ras_transform_to_parent(alignment.transform)
                      for role, alignment in case.alignments.items() if alignment.registered}
        scene_adapter.add_registration_transforms(self.scene, nodes, transforms, case.reference_role)
        return segmentation

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
            written = scene_adapter.write_result_to_scene(result, run.reference_node, self.scene)
            transforms = {entry["role"]: np.array(entry["ras_transform_to_parent"])
                          for entry in summary.get("registration", []) if entry["registered"]}
            scene_adapter.add_registration_transforms(self.scene, run.nodes, transforms,
                                                      summary.get("reference", "t1ce"))
            return written
        finally:
            run.cleanup()

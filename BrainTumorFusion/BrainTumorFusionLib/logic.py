"""Scene-level logic shared by the GUI and the Python console: Qt-free, runs headless with slicer-core.

`segment` runs in-process and blocks; `start_segmentation` / `finish_segmentation` run the same pipeline in a
background process (the library's `predict` command on temporary NRRD files) so the GUI stays responsive.
"""

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from . import scene as scene_adapter
from .case import Result
from .geometry import image_from_array, ijk_to_ras_of
from .modalities import MODALITIES, assign_roles
from .process_runner import BackgroundProcess, library_command


class BackgroundSegmentation:
    """A segmentation running in another process: poll() for lines, cancel() to kill it."""

    def __init__(self, process, folder, reference_node, case_name):
        self.process, self.folder = process, Path(folder)
        self.reference_node, self.case_name = reference_node, case_name

    def poll(self):
        return self.process.poll()

    def cancel(self):
        self.process.cancel()
        self.cleanup()

    def cleanup(self):
        shutil.rmtree(self.folder, ignore_errors=True)


class SceneLogic:
    def __init__(self, scene, python_executable=None):
        self.scene = scene
        self.python_executable = python_executable

    def volume_nodes(self):
        """Single-channel scalar volumes: label maps and vector volumes cannot take a modality role."""
        return [node for node in self.scene.GetNodesByClass("vtkMRMLScalarVolumeNode")
                if not node.IsA("vtkMRMLLabelMapVolumeNode") and not node.IsA("vtkMRMLVectorVolumeNode")]

    def auto_assign(self):
        """role -> volume node (or None) from node names; the most specific name pattern wins."""
        nodes = {node.GetName(): node for node in reversed(self.volume_nodes())}
        return {role: nodes.get(name) for role, name in assign_roles(list(nodes)[::-1]).items()}

    def segment(self, t1=None, t1ce=None, t2=None, flair=None, model="hafb", device="auto", grade=False,
                progress=None, should_cancel=None, catalogue_files=(), pipeline=None, members=None):
        """Segment in this process; returns the new segmentation node (tables are added beside it).

        model="ensemble" averages the segmentation models in `members` (list or "a,b"; default: all)."""
        result = self._run(t1, t1ce, t2, flair, model, device, grade, progress, should_cancel, catalogue_files,
                           pipeline, members)
        return scene_adapter.write_result_to_scene(result, self._reference({"t1": t1, "t1ce": t1ce, "t2": t2,
                                                                            "flair": flair}), self.scene)[0]

    def grade(self, t1=None, t1ce=None, t2=None, flair=None, model="cmg", device="auto", catalogue_files=(),
              grader=None):
        """Grade probabilities {"HGG": p, "LGG": p}; adds nothing to the scene."""
        from .catalogue import Catalogue
        from .pipeline import Pipeline

        case = scene_adapter.case_from_nodes(t1=t1, t1ce=t1ce, t2=t2, flair=flair)
        pipeline = Pipeline(model=None, device=device, grade=True, grading_model=model, grader=grader,
                            catalogue=Catalogue.load(catalogue_files))
        return pipeline.grade(case)

    def _run(self, t1, t1ce, t2, flair, model, device, grade, progress, should_cancel, catalogue_files, pipeline,
             members):
        from .catalogue import Catalogue
        from .pipeline import Pipeline

        case = scene_adapter.case_from_nodes(t1=t1, t1ce=t1ce, t2=t2, flair=flair)
        pipeline = pipeline or Pipeline(model=model, device=device, grade=grade, members=members,
                                        catalogue=Catalogue.load(catalogue_files))
        return pipeline.run(case, progress, should_cancel)

    @staticmethod
    def _reference(nodes):
        return next(nodes[role] for role in MODALITIES if nodes.get(role) is not None)

    def start_segmentation(self, t1=None, t1ce=None, t2=None, flair=None, model="hafb", device="auto",
                           grade=False, catalogue_files=(), members=None):
        """Write the inputs to temporary NRRD files and start the `predict` command on them."""
        from .catalogue import ENSEMBLE, Catalogue, member_names

        nodes = {"t1": t1, "t1ce": t1ce, "t2": t2, "flair": flair}
        scene_adapter.case_from_nodes(**nodes)  # validate here, so bad input fails before any process starts
        if model == ENSEMBLE:  # check the members here too, and pass the defaults on by name
            members = [entry.name for entry in Catalogue.load(catalogue_files).ensemble_members(members)]
        folder = Path(tempfile.mkdtemp(prefix="BrainTumorFusion-"))
        arguments = ["predict", "--output-dir", str(folder / "output"), "--model", model, "--device", device]
        arguments += ["--members", ",".join(member_names(members))] if members else []
        for role, node in nodes.items():
            if node is not None:
                array, ijk_to_ras = scene_adapter.volume_from_node(node, role)
                path = folder / f"{role}.nrrd"
                sitk.WriteImage(image_from_array(array, ijk_to_ras), str(path), True)
                arguments += [f"--{role}", str(path)]
        arguments += ["--grade"] if grade else []
        for extra in catalogue_files:
            arguments += ["--catalogue", str(extra)]
        reference = self._reference(nodes)
        name = scene_adapter.case_name_from_node_name(reference.GetName())
        arguments += ["--name", name]
        process = BackgroundProcess(library_command(self.python_executable, *arguments))
        return BackgroundSegmentation(process, folder, reference, name)

    def finish_segmentation(self, run):
        """Import a finished background run into the scene; returns (segmentation, volumes table, grade table)."""
        try:
            output = run.folder / "output"
            summary = json.loads((output / "result.json").read_text())
            image = sitk.ReadImage(str(output / "labels.nrrd"))
            result = Result(case_name=run.case_name, labels=sitk.GetArrayFromImage(image).astype(np.uint8),
                            ijk_to_ras=ijk_to_ras_of(image), volumes_ml=summary["volumes_ml"],
                            grade_probabilities=summary["grade_probabilities"], model=summary["model"],
                            device=summary["device"], seconds=summary["seconds"], warnings=summary["warnings"])
            return scene_adapter.write_result_to_scene(result, run.reference_node, self.scene)
        finally:
            run.cleanup()

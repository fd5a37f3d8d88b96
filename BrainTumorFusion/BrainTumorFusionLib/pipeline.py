"""One case through the core: check modalities, preprocess, run the network(s), postprocess, measure."""

import time
from dataclasses import dataclass

from .case import Result
from .catalogue import Catalogue, load_network
from .errors import InputError
from .inference import choose_device, classify, predict_regions
from .modalities import DISPLAY_NAMES, MODALITIES
from .postprocessing import probabilities_on_case_grid, regions_to_labels, region_volumes, uncrop
from .preprocessing import prepare

GRADES = ("HGG", "LGG")


@dataclass
class Model:
    """A network ready to run, with what the pipeline needs to know about it."""

    name: str
    network: object  # torch.nn.Module in eval mode
    patch_size: tuple = (128, 128, 128)
    spacing_mm: tuple = None
    modalities: tuple = MODALITIES
    handles_missing_modalities: bool = False

    @classmethod
    def from_catalogue(cls, name, task, device, catalogue=None):
        entry = (catalogue or Catalogue.load()).entry(name, task)
        return cls(name=entry.name, network=load_network(entry, device), patch_size=entry.patch_size,
                   spacing_mm=entry.spacing_mm, modalities=entry.modalities,
                   handles_missing_modalities=entry.handles_missing_modalities)

    def check_modalities(self, case):
        missing = [m for m in self.modalities if not case.present[MODALITIES.index(m)]]
        if missing and not self.handles_missing_modalities:
            names = ", ".join(DISPLAY_NAMES[m] for m in missing)
            raise InputError(f"Model '{self.name}' needs {names}, which is not selected. Select it, or choose a "
                             "model whose catalogue entry says it handles missing modalities.")


class Pipeline:
    """Segment (and optionally grade) cases with models from the catalogue or injected Model objects.

    model=None makes a grading-only pipeline (use `grade`).
    """

    def __init__(self, model="hafb", device="auto", grade=False, catalogue=None, segmenter=None, grader=None,
                 grading_model="cmg"):
        self.device = choose_device(device)
        self.segmenter = segmenter or (Model.from_catalogue(model, "segmentation", self.device, catalogue)
                                       if model else None)
        self.grader = grader or (Model.from_catalogue(grading_model, "grading", self.device, catalogue)
                                 if grade else None)

    def run(self, case, progress=None, should_cancel=None):
        """Result for one Case. progress(fraction, message) is called as work advances."""
        report = progress or (lambda fraction, message: None)
        start = time.perf_counter()
        for model in filter(None, (self.segmenter, self.grader)):
            model.check_modalities(case)
        report(0.0, "Preprocessing")
        prepared = prepare(case, self.segmenter.spacing_mm)
        present = case.present if self.segmenter.handles_missing_modalities else None
        probabilities = predict_regions(
            self.segmenter.network, prepared.image, self.segmenter.patch_size, self.device, present,
            lambda fraction, message: report(0.05 + 0.85 * fraction, message), should_cancel)
        report(0.9, "Postprocessing")
        labels = regions_to_labels(probabilities_on_case_grid(probabilities, prepared))
        labels = uncrop(labels, prepared.crop, case.image.shape[1:])
        grades = self.grade(case) if self.grader else None
        report(1.0, "Done")
        return Result(case_name=case.name, labels=labels, ijk_to_ras=case.ijk_to_ras,
                      volumes_ml=region_volumes(labels, case.voxel_volume_ml), grade_probabilities=grades,
                      model=self.segmenter.name, device=str(self.device),
                      seconds=round(time.perf_counter() - start, 2), warnings=list(case.warnings))

    def grade(self, case):
        """{"HGG": p, "LGG": p} from the grading model on the brain crop resized to its input size."""
        self.grader.check_modalities(case)
        prepared = prepare(case, self.grader.spacing_mm)
        present = case.present if self.grader.handles_missing_modalities else None
        probabilities = classify(self.grader.network, prepared.image, self.grader.patch_size, self.device, present)
        return {grade: round(float(p), 4) for grade, p in zip(GRADES, probabilities)}

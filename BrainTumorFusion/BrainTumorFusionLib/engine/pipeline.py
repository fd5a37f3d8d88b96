"""One case through the core: check modalities, preprocess, run the network(s), postprocess, measure.

The segmenter is a Model (one network) or an Ensemble (several models whose region probabilities are
averaged on the case's brain crop before thresholding).
"""

import time
from dataclasses import dataclass
from typing import Iterable, Optional, Union

import numpy as np
import torch

from ..case import Case, Result
from ..choices import AUTO, DEFAULT_GRADER, DEFAULT_MODEL, ENSEMBLE, Members, member_names
from ..errors import Cancelled, InputError, ModelError
from ..measurements.rano import measure
from ..modalities import MODALITIES, display, how_to_give
from ..options import SegmentationOptions
from ..preparation.plausibility import grading_refusal, result_warnings
from ..progress import Progress, ShouldCancel, share
from .auto_choice import choose, collapse_warning, measured_cleanup, usable_choices
from .catalogue import Catalogue, ModelEntry, load_network
from .inference import (
    autocast_dtype,
    check_precision,
    choose_device,
    classify,
    covering_window,
    flips_of,
    keeps_dice_in_bf16_here,
    precision_name,
    predict_regions,
)
from .postprocessing import Cleanup, clean_labels, regions_to_labels, uncrop
from .preprocessing import Crop, Prepared, prepare

GRADES = ("HGG", "LGG")
Device = Union[str, torch.device]
Present = tuple[bool, ...]  # one per modality, MODALITIES order


@dataclass
class Model:
    """A network ready to run, with what the pipeline needs to know about it."""

    name: str
    network: torch.nn.Module  # in eval mode
    patch_size: tuple[int, int, int] = (128, 128, 128)
    spacing_mm: Optional[tuple[float, float, float]] = None
    modalities: tuple[str, ...] = MODALITIES
    handles_missing_modalities: bool = False
    notes: str = ""  # the catalogue entry's caveat, passed on with its results
    bf16_keeps_dice: bool = False  # bfloat16 keeps its Dice on this CPU (catalogue `precision.cpu`): "auto" may use it
    whole_window: bool = False  # one window over the whole crop instead of patch-sized sliding windows
    cleanup: Cleanup = Cleanup()  # applied to its labels when it runs alone (not as an ensemble member)

    @classmethod
    def from_catalogue(cls, name: str, task: str, device: Device, catalogue: Optional[Catalogue] = None) -> "Model":
        catalogue = catalogue or Catalogue.load()
        model = cls.from_entry(catalogue.entry(name, task), device)
        model.cleanup = measured_cleanup(catalogue, [name])
        return model

    @classmethod
    def from_entry(cls, entry: ModelEntry, device: Device) -> "Model":
        return cls(name=entry.name, network=load_network(entry, device), patch_size=entry.patch_size,
                   spacing_mm=entry.spacing_mm, modalities=entry.modalities,
                   handles_missing_modalities=entry.handles_missing_modalities,
                   notes=entry.details.get("notes", ""), whole_window=entry.whole_window,
                   bf16_keeps_dice=keeps_dice_in_bf16_here(entry.bf16_verdicts))

    def precisions(self, device: Device, precision: str) -> list[str]:
        """The precision this model runs in (fp32, bf16, fp16), as a list (an ensemble has one per member)."""
        return [precision_name(autocast_dtype(precision, torch.device(device), self.bf16_keeps_dice))]

    def missing_modalities(self, present: Present) -> list[str]:
        """The modalities (roles) this model needs and the case lacks (none if it handles that)."""
        if self.handles_missing_modalities:
            return []
        return [m for m in self.modalities if not present[MODALITIES.index(m)]]

    def check_modalities(self, present: Present) -> None:
        missing = self.missing_modalities(present)
        if missing:
            verb = "is" if len(missing) == 1 else "are"
            raise InputError(f"Model '{self.name}' needs {display(missing)}, which {verb} missing: "
                             f"{how_to_give(missing)}; or choose a model whose catalogue entry says it handles "
                             "missing modalities.")

    def crop_probabilities(self, case: Case, device: Device, progress: Progress, should_cancel: ShouldCancel = None,
                           precision: str = "auto", tta: str = "off") -> tuple[np.ndarray, Crop]:
        """(Region probabilities (3, ...) on the grid of the case's brain crop, the crop's slices).

        The network sees the crop at its own spacing; its output is resampled back onto the crop's grid."""
        progress(0.0, "Preprocessing")
        prepared = prepare(case, self.spacing_mm)
        probabilities = self.model_probabilities(prepared, case.present, device, share(progress, 0.05, 1.0),
                                                 should_cancel, precision, tta)
        return prepared.to_crop_grid(probabilities), prepared.crop

    def model_probabilities(self, prepared: Prepared, present: Present, device: Device, progress: Progress,
                            should_cancel: ShouldCancel = None, precision: str = "auto",
                            tta: str = "off") -> np.ndarray:
        """Region probabilities (3, ...) on the model grid of `prepared` (prepared at this model's spacing)."""
        window = self.patch_size
        if self.whole_window:
            window = covering_window(prepared.image.shape[1:], self.patch_size, self.network)
        return predict_regions(self.network, prepared.image, window, device,
                               present if self.handles_missing_modalities else None, progress, should_cancel,
                               precision=precision, cpu_bf16_allowed=self.bf16_keeps_dice, tta=tta)


class Ensemble:
    """Several segmentation Models whose region probabilities (WT, TC, ET) are averaged before thresholding.

    Members run one after the other, each at its own spacing and patch size; only one member's probabilities
    and one running sum per spacing are held at a time. Members wait in CPU memory and visit the GPU one at a time.
    """

    def __init__(self, members: Iterable[Model], cleanup: Cleanup = Cleanup()):
        self.members, self.cleanup = list(members), cleanup
        if len(self.members) < 2:
            raise ModelError(f"An ensemble needs at least 2 segmentation models, got {len(self.members)}. Give "
                             "two or more, or use the single model on its own.")
        self.name = f"{ENSEMBLE} ({' + '.join(member.name for member in self.members)})"

    @classmethod
    def from_catalogue(cls, names: Members = None, catalogue: Optional[Catalogue] = None) -> "Ensemble":
        """Members named in `names` (list or "a,b"); the catalogue's default members when none are named."""
        catalogue = catalogue or Catalogue.load()
        entries = catalogue.ensemble_members(names)
        return cls((Model.from_entry(entry, "cpu") for entry in entries),
                   measured_cleanup(catalogue, [entry.name for entry in entries]))

    def check_modalities(self, present: Present) -> None:
        lacking = {member.name: member.missing_modalities(present) for member in self.members}
        lacking = {name: missing for name, missing in lacking.items() if missing}
        if lacking:
            needs = "; ".join(f"'{name}' needs {display(missing)}" for name, missing in lacking.items())
            roles = [role for role in MODALITIES if any(role in missing for missing in lacking.values())]
            raise InputError(f"Ensemble members cannot run without modalities this case lacks: {needs}. Leave "
                             f"{', '.join(lacking)} out of the members, or {how_to_give(roles)}.")

    def precisions(self, device: Device, precision: str) -> list[str]:
        return [name for member in self.members for name in member.precisions(device, precision)]

    def crop_probabilities(self, case: Case, device: Device, progress: Progress, should_cancel: ShouldCancel = None,
                           precision: str = "auto", tta: str = "off") -> tuple[np.ndarray, Crop]:
        """Mean of the members' region probabilities on the case's brain crop grid, and the crop's slices.

        Members of one spacing share its preparation, and their sum is resampled back once (linear
        interpolation commutes with the mean): the preprocessing of a case is done once per spacing."""
        sums: dict = {}  # spacing -> [Prepared, sum of its members' probabilities on its model grid]
        count = len(self.members)
        for index, member in enumerate(self.members):
            if should_cancel and should_cancel():
                raise Cancelled("Cancelled by the user; nothing was written.")
            part = share(progress, index / count, (index + 1) / count, f"{member.name}, {index + 1} of {count}")
            spacing = None if member.spacing_mm is None else tuple(member.spacing_mm)
            if spacing not in sums:
                part(0.0, "Preprocessing")
                sums[spacing] = [prepare(case, spacing), None]
            prepared, total = sums[spacing]
            probabilities = member.model_probabilities(prepared, case.present, device, share(part, 0.05, 1.0),
                                                       should_cancel, precision, tta)
            member.network.to("cpu")  # free the GPU for the next member
            if total is None:
                sums[spacing][1] = probabilities
            else:
                total += probabilities
            del probabilities  # only the running sums stay alive while the next member runs
        mean = sum(prepared.to_crop_grid(total) for prepared, total in sums.values()) / count
        return mean, prepared.crop  # every preparation crops the case to the same brain box


class Auto:
    """The model "auto": per case, the catalogue's most accurate measured choice for the modalities it has
    (auto_choice.choose). Chosen segmenters are loaded once and kept for the next cases."""

    name = AUTO

    def __init__(self, catalogue: Catalogue, device: torch.device):
        usable_choices(catalogue)  # a catalogue without a usable table is refused before any case
        self.catalogue, self.device, self.loaded = catalogue, device, {}

    @property
    def members(self) -> list[ModelEntry]:
        """Every network a choice may run (for memory estimates: entries have spacing, patch and window)."""
        names = dict.fromkeys(name for choice in usable_choices(self.catalogue) for name in choice.member_names)
        return [self.catalogue.entries[name] for name in names]

    def choose(self, present: Present) -> tuple[Union[Model, "Ensemble"], str, list[str]]:
        """(The segmenter for a case with these modalities, why it was chosen, warnings about the choice)."""
        choice, reason = choose(self.catalogue, present, self.device.type == "cpu")
        key = tuple(choice.member_names)
        if key not in self.loaded:
            self.loaded[key] = segmentation_model(choice.model, key if len(key) > 1 else None, self.device,
                                                  self.catalogue)
        return self.loaded[key], f"{AUTO}: {reason}", collapse_warning(choice)

    def check_modalities(self, present: Present) -> None:
        self.choose(present)[0].check_modalities(present)


def segmentation_model(name: str, members: Members, device: Device,
                       catalogue: Optional[Catalogue]) -> Union[Model, Ensemble]:
    """The segmenter a pipeline uses for a catalogue name ("auto", "ensemble" with `members`, or one model)."""
    if name == AUTO and not members:
        return Auto(catalogue or Catalogue.load(), torch.device(device))
    if name == ENSEMBLE:
        return Ensemble.from_catalogue(members, catalogue)
    if members:
        raise ModelError(f"Members ({', '.join(member_names(members))}) only apply to the model '{ENSEMBLE}'; "
                         f"choose model '{ENSEMBLE}' or leave the members out.")
    return Model.from_catalogue(name, "segmentation", device, catalogue)


class Pipeline:
    """Segment (and optionally grade) cases with models from the catalogue or injected Model objects.

    model=None makes a grading-only pipeline (use `grade`). model="auto" (the default) picks per case the
    catalogue's most accurate measured choice for the modalities present (auto_choice). model="ensemble" averages
    the models named in `members` (a list or "a,b"; default: the catalogue's default_ensemble()). `precision`:
    auto, fp32, bf16 or fp16 (see inference). `tta`: "off" (the default) or "mirror", test-time augmentation by
    mirroring for every network that runs (each ensemble member, whatever "auto" chooses); it multiplies their time.
    """

    def __init__(self, model: Optional[str] = DEFAULT_MODEL, device: Optional[str] = "auto", grade: bool = False,
                 catalogue: Optional[Catalogue] = None, segmenter: Union[Model, Ensemble, None] = None,
                 grader: Optional[Model] = None, grading_model: str = DEFAULT_GRADER, members: Members = None,
                 precision: str = "auto", tta: str = "off"):
        self.device = choose_device(device)
        check_precision(precision, self.device)  # unknown settings are refused before any model loads
        flips_of(tta)
        self.precision, self.tta = precision, tta
        self.segmenter = segmenter or (segmentation_model(model, members, self.device, catalogue)
                                       if model else None)
        self.grader = grader or (Model.from_catalogue(grading_model, "grading", self.device, catalogue)
                                 if grade else None)

    @classmethod
    def from_options(cls, options: SegmentationOptions, catalogue: Optional[Catalogue] = None) -> "Pipeline":
        """The pipeline of a run's options (the input preparation among them is the caller's: options.preparation())."""
        return cls(model=options.model, device=options.device, grade=options.grade,
                   catalogue=catalogue or Catalogue.load(options.catalogues), members=options.members or None,
                   grading_model=options.grading_model, precision=options.precision, tta=options.tta)

    def run(self, case: Case, progress: Optional[Progress] = None, should_cancel: ShouldCancel = None) -> Result:
        """Result for one Case. progress(fraction, message) is called as work advances."""
        report = progress or (lambda fraction, message: None)
        start = time.perf_counter()
        self.check_modalities(case.present)
        segmenter, choice, choice_warnings = self.segmenter_for(case)
        probabilities, crop = segmenter.crop_probabilities(case, self.device, share(report, 0.0, 0.9),
                                                           should_cancel, self.precision, self.tta)
        report(0.9, "Postprocessing")
        labels = clean_labels(regions_to_labels(probabilities), case.voxel_volume_ml, segmenter.cleanup)
        labels = uncrop(labels, crop, case.image.shape[1:])
        measurements = measure(labels, case.ijk_to_ras)
        volumes = measurements.volumes_ml
        caveat = getattr(segmenter, "notes", "")  # a model's known weakness, e.g. a collapse on a validation case
        warnings = (list(case.warnings) + choice_warnings + ([f"Model '{segmenter.name}': {caveat}"] if caveat else [])
                    + result_warnings(volumes))
        grades, refusal = None, grading_refusal(volumes, case.warnings) if self.grader else None
        if refusal:
            warnings.append(refusal)
        elif self.grader:
            grades = self.grade(case)
            warnings += [f"Grading model '{self.grader.name}': {self.grader.notes}"] if self.grader.notes else []
        report(1.0, "Done")
        seconds = round(time.perf_counter() - start, 2)
        return Result(case_name=case.name, labels=labels, ijk_to_ras=case.ijk_to_ras, volumes_ml=volumes,
                      grade_probabilities=grades, model=segmenter.name, model_choice=choice,
                      device=f"{self.device} {self.precision_used(segmenter)}", seconds=seconds, warnings=warnings,
                      stages={**case.stages, "segment": seconds},  # the case's preparation stages come first
                      measurements=measurements)

    def segmenter_for(self, case: Case) -> tuple[Union[Model, Ensemble], str, list[str]]:
        """(The segmenter that runs on this case, why it was chosen and warnings about that: "" and [] unless the
        model is "auto")."""
        if isinstance(self.segmenter, Auto):
            return self.segmenter.choose(case.present)
        return self.segmenter, "", []

    def precision_used(self, segmenter: Union[Model, Ensemble]) -> str:
        """e.g. "bf16", or "bf16+fp32" for an ensemble whose members differ."""
        names = segmenter.precisions(self.device, self.precision)
        return "+".join(dict.fromkeys(names))

    def check_modalities(self, present: Present) -> None:
        """InputError saying what to select (or deselect) if a model of this pipeline cannot run on a case with
        these modalities (one bool per modality; modalities.present_of): called before the inputs are read and
        registered, so a case it cannot run costs nothing. None present is left to the reader, whose error says so."""
        if not any(present):
            return
        for model in filter(None, (self.segmenter, self.grader)):
            model.check_modalities(present)

    def grade(self, case: Case) -> dict[str, float]:
        """{"HGG": p, "LGG": p} from the grading model on the brain crop resized to its input size."""
        self.grader.check_modalities(case.present)
        prepared = prepare(case, self.grader.spacing_mm)
        present = case.present if self.grader.handles_missing_modalities else None
        probabilities = classify(self.grader.network, prepared.image, self.grader.patch_size, self.device, present,
                                 self.precision, self.grader.bf16_keeps_dice)
        return {grade: round(float(p), 4) for grade, p in zip(GRADES, probabilities)}

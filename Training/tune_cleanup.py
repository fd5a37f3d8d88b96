"""Choose the BraTS clean-up (postprocessing.Cleanup) by measurement on saved predictions.

`python -m Training tune-cleanup --predictions runs/pred/ensemble --data-dir ../shared/data/brats` reads every
`<case>_seg.nii.gz` of --predictions (as written by `evaluate --save-predictions`) and its ground truth, then
tries each step's volumes one step at a time, in the order the library applies them (nnU-Net's way of choosing
its postprocessing): a value is kept only when it raises the mean Dice or the mean lesion-wise Dice (BraTS 2023+,
which every false island lowers) of the region it changes by more than `MIN_GAIN` over the best so far and lowers
neither by more than `MIN_GAIN`; the next step starts from the choices made. Prints one table row per value.
"""

import dataclasses
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from BrainTumorFusionLib.engine.postprocessing import Cleanup, clean_labels
from BrainTumorFusionLib.preparation.geometry import ijk_to_ras_of

from .data import REGIONS, case_folder, discover, labels_file, read_labels_on_case_grid, regions_from_labels
from .metrics import dice, lesion_wise_dice

# (Cleanup field, region it is scored on, volumes tried in mL)
STEPS = (("wt_island_ml", "WT", (0.0, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0)),
         ("tc_island_ml", "TC", (0.0, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0)),
         ("et_island_ml", "ET", (0.0, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)),
         ("min_enhancing_ml", "ET", (0.0, 0.1, 0.25, 0.5, 1.0, 2.0)))
MIN_GAIN = 0.002  # below this a step is noise on a few validation cases: leave it off


def load_pairs(predictions_dir, data_dir):
    """[(case_id, predicted labels, true labels, voxel volume mL)] for every prediction with a ground truth."""
    predictions_dir = Path(predictions_dir)
    cases = discover(data_dir)
    pairs = []
    for path in sorted(predictions_dir.glob("*_seg.nii.gz")):
        case_id = path.name[: -len("_seg.nii.gz")]
        if case_id not in cases:
            continue
        image = sitk.ReadImage(str(path))
        predicted = sitk.GetArrayFromImage(image)
        truth = read_labels_on_case_grid(labels_file(case_folder(cases[case_id])), predicted.shape,
                                         ijk_to_ras_of(image))
        pairs.append((case_id, predicted, truth, float(np.prod(image.GetSpacing())) / 1000.0))
    if not pairs:
        raise SystemExit(f"No <case>_seg.nii.gz with a ground truth in {data_dir} found in {predictions_dir}.")
    return pairs


def mean_dice(pairs, cleanup):
    """({region: mean Dice}, {region: mean lesion-wise Dice}) over the cases after `cleanup`."""
    scores, lesions = np.zeros(len(REGIONS)), np.zeros(len(REGIONS))
    for _, predicted, truth, voxel_ml in pairs:
        cleaned = regions_from_labels(clean_labels(predicted, voxel_ml, cleanup))
        expected = regions_from_labels(truth)
        scores += [dice(cleaned[i], expected[i]) for i in range(len(REGIONS))]
        lesions += [lesion_wise_dice(cleaned[i], expected[i]) for i in range(len(REGIONS))]
    return dict(zip(REGIONS, scores / len(pairs))), dict(zip(REGIONS, lesions / len(pairs)))


def better(trial, best, region):
    """Whether a trial's (Dice, lesion-wise Dice) of `region` gains more than MIN_GAIN on one and loses at most
    MIN_GAIN on the other."""
    gains = [new[region] - old[region] for new, old in zip(trial, best)]
    return max(gains) > MIN_GAIN and min(gains) >= -MIN_GAIN


def tumor_box(predicted, truth):
    """Both label maps cut to the box around every labelled voxel of either (one voxel of margin): islands, Dice
    and lesion-wise Dice are the same there, and the whole grid costs about 20 times more."""
    found = np.argwhere((predicted > 0) | (truth > 0))
    if not len(found):
        return predicted[:1, :1, :1], truth[:1, :1, :1]
    box = tuple(slice(max(low - 1, 0), high + 2) for low, high in zip(found.min(0), found.max(0)))
    return predicted[box], truth[box]


def tune(pairs, printer=print):
    """The chosen Cleanup; prints `| step | mL | Dice WT | TC | ET | lesion-wise WT | TC | ET | kept |` rows."""
    pairs = [(case_id, *tumor_box(predicted, truth), voxel_ml) for case_id, predicted, truth, voxel_ml in pairs]
    chosen = Cleanup()
    best = mean_dice(pairs, chosen)

    def row(scores):
        return " | ".join(f"{part[r]:.4f}" for part in scores for r in REGIONS)

    printer(f"{len(pairs)} cases\n")
    printer("| step | mL | Dice WT | TC | ET | lesion-wise WT | TC | ET | kept |\n"
            "|---|---:|---:|---:|---:|---:|---:|---:|---|")
    printer(f"| none | - | {row(best)} | |")
    for field, region, volumes in STEPS:
        for volume in volumes[1:]:
            trial = dataclasses.replace(chosen, **{field: volume})
            scores = mean_dice(pairs, trial)
            kept = better(scores, best, region)
            printer(f"| {field} | {volume} | {row(scores)} | {'yes' if kept else ''} |")
            if kept:
                # Later volumes of the same step compete with this one.
                chosen, best = trial, scores
    printer(f"\nchosen: {chosen}")
    return chosen

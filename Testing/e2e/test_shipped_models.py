"""Shipped models on the real validation cases of their recorded split (the library's own inference)."""

import numpy as np
import pytest
import SimpleITK as sitk

from BrainTumorFusionLib.catalogue import Catalogue
from BrainTumorFusionLib.file_io import case_files_in, read_case
from BrainTumorFusionLib.pipeline import Pipeline
from realdata import brats_case_dir

# The default model's acceptance bar (issue: at least 0.75 mean whole-tumor Dice on validation).
MINIMUM_WT_DICE = {"hafb": 0.75}


def whole_tumor_dice(prediction, truth):
    prediction, truth = prediction > 0, truth > 0
    return 2 * np.logical_and(prediction, truth).sum() / max(prediction.sum() + truth.sum(), 1)


@pytest.mark.parametrize("name", sorted(MINIMUM_WT_DICE))
def test_shipped_model_reaches_its_whole_tumor_dice(name):
    catalogue = Catalogue.load()
    assert name in catalogue.names("segmentation"), f"the default model '{name}' is not shipped"
    entry = catalogue.entry(name, "segmentation")
    validation = entry.details["split"]["validation"]
    assert validation and not set(validation) & set(entry.details["split"]["train"])
    pipeline = Pipeline(model=name, device="cpu", catalogue=catalogue)
    scores = []
    for case_id in validation:
        case, _ = read_case(case_files_in(brats_case_dir(case_id)))
        truth = sitk.GetArrayFromImage(sitk.ReadImage(str(brats_case_dir(case_id) / f"{case_id}_seg.nii.gz")))
        scores.append(whole_tumor_dice(pipeline.run(case).labels, truth))
    assert np.mean(scores) >= MINIMUM_WT_DICE[name], dict(zip(validation, np.round(scores, 3)))

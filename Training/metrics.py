"""Dice and HD95 per region (WT, TC, ET) with the BraTS conventions for empty masks.

Dice: MONAI's `compute_dice` (ignore_empty=False: both masks empty -> 1, only one empty -> 0).
HD95: MONAI's `compute_hausdorff_distance(percentile=95)` in mm (spacing of the grid; it needs SciPy). Both masks
empty -> 0; only one empty -> the diagonal of the volume in mm (373.13 mm for the BraTS 240 x 240 x 155 grid, the
value the BraTS evaluation uses).
Lesion-wise Dice (BraTS 2023+ ranks on it): Panoptica with its BraTS evaluator configuration on each region mask.
"""

import math

import numpy as np
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance
from scipy import ndimage

from .data import REGIONS, regions_from_labels


def dice(pred, truth):
    """Dice of two boolean arrays (BraTS convention for empty masks)."""
    p = torch.as_tensor(np.asarray(pred, dtype=bool))[None, None].float()
    t = torch.as_tensor(np.asarray(truth, dtype=bool))[None, None].float()
    return float(compute_dice(p, t, include_background=True, ignore_empty=False)[0, 0])


def hd95(pred, truth, spacing=(1.0, 1.0, 1.0)):
    """95th-percentile Hausdorff distance (mm) of two boolean (D, H, W) arrays; spacing in (D, H, W) order."""
    pred, truth = np.asarray(pred, dtype=bool), np.asarray(truth, dtype=bool)
    if not pred.any() and not truth.any():
        return 0.0
    if not pred.any() or not truth.any():
        return float(math.sqrt(sum((n * s) ** 2 for n, s in zip(pred.shape, spacing))))
    p = torch.from_numpy(pred)[None, None].float()
    t = torch.from_numpy(truth)[None, None].float()
    return float(compute_hausdorff_distance(p, t, include_background=True, percentile=95, spacing=list(spacing))[0, 0])


def lesion_wise_dice(pred, truth):
    """Panoptic-quality Dice of two boolean arrays by Panoptica's BraTS configuration: lesions are connected
    components, matched one to one at IoU > 0.5; the mean Dice of matched lesions times the F1 of lesion detection,
    so every missed lesion and every false island counts. Both masks empty -> 1 (as legacy Dice). The region mask
    is given, so BraTS label values (4 or 3 for enhancing) do not matter here."""
    pred, truth = np.asarray(pred, dtype=bool), np.asarray(truth, dtype=bool)
    if not pred.any() and not truth.any():
        return 1.0
    (result,) = _panoptica_evaluator().evaluate(pred.astype(np.uint8), truth.astype(np.uint8), log_times=False,
                                                 verbose=False).values()
    return float(result.pq_dsc)


# The official BraTS 2023+ glioma scorer's lesion-wise Dice (BraTS-GLI parameters; Saluja et al.,
# rachitsaluja/BraTS-2023-Metrics), written here from its definition: ground-truth lesions are grouped by the
# components of the ground truth dilated 3 times (18-neighbourhood), each group is scored against the union of the
# predicted components (26-connected) that reach its own 3-fold dilation, groups of 50 mm3 or less are left out,
# and every predicted component that reaches no group counts as a false positive scored 0.
OFFICIAL_DILATION = 3
OFFICIAL_MIN_MM3 = 50.0


def official_lesion_dice(pred, truth, spacing=(1.0, 1.0, 1.0)):
    """Lesion-wise Dice of two boolean (D, H, W) arrays as the BraTS 2023 glioma challenge ranks it (see above);
    spacing in (D, H, W) order. No scored lesion and no false positive -> 1."""
    pred, truth = np.asarray(pred, dtype=bool), np.asarray(truth, dtype=bool)
    full = np.ones((3, 3, 3), dtype=bool)
    near = ndimage.generate_binary_structure(3, 2)
    groups = _truth_groups(truth, near, full)
    predicted, _ = ndimage.label(pred, full)
    voxel_mm3 = float(np.prod(spacing))
    reached, scores = set(), []
    for index, box in enumerate(ndimage.find_objects(groups), start=1):
        box = tuple(slice(max(s.start - OFFICIAL_DILATION, 0), s.stop + OFFICIAL_DILATION) for s in box)
        lesion = groups[box] == index
        reach = ndimage.binary_dilation(lesion, near, OFFICIAL_DILATION)
        hits = set(np.unique(predicted[box][reach]).tolist()) - {0}
        reached |= hits
        if lesion.sum() * voxel_mm3 > OFFICIAL_MIN_MM3:
            matched = np.isin(predicted, list(hits)) if hits else np.zeros_like(pred)
            scores.append(dice(matched, groups == index))
    false_positives = len(set(np.unique(predicted).tolist()) - {0} - reached)
    count = len(scores) + false_positives
    return float(sum(scores) / count) if count else 1.0


def _truth_groups(truth, near, full):
    """Ground-truth voxels labelled by the component of the dilated ground truth they lie in."""
    dilated, _ = ndimage.label(ndimage.binary_dilation(truth, near, OFFICIAL_DILATION), full)
    return np.where(truth, dilated, 0)


_EVALUATOR = []


def _panoptica_evaluator():
    if not _EVALUATOR:  # Panoptica is a Training dependency only; import it (and its banner) once, when needed
        from panoptica import Panoptica_Evaluator
        from panoptica.utils.citation_reminder import disable_citation_reminder
        from panoptica.utils.filepath import config_by_name

        disable_citation_reminder()
        _EVALUATOR.append(Panoptica_Evaluator.load_from_config(config_by_name("panoptica_evaluator_BRATS")))
    return _EVALUATOR[0]


def region_metrics(pred_labels, true_labels, spacing=None):
    """{"dice_WT": ..., "dice_TC": ..., "dice_ET": ..., ["hd95_WT": ..., "lesion_dice_WT": ... when spacing is
    given]} of two BraTS label maps (K, J, I); spacing (mm) in (I, J, K) order as the library's geometry gives it."""
    pred_regions, true_regions = regions_from_labels(pred_labels), regions_from_labels(true_labels)
    out = {}
    for i, region in enumerate(REGIONS):
        out[f"dice_{region}"] = dice(pred_regions[i], true_regions[i])
    if spacing is not None:
        spacing_dhw = tuple(float(s) for s in reversed(tuple(spacing)))
        for i, region in enumerate(REGIONS):
            out[f"hd95_{region}"] = hd95(pred_regions[i], true_regions[i], spacing_dhw)
        for i, region in enumerate(REGIONS):
            out[f"lesion_dice_{region}"] = lesion_wise_dice(pred_regions[i], true_regions[i])
    return out

"""Dice and HD95 per region (WT, TC, ET) with the BraTS conventions for empty masks.

Dice: MONAI's `compute_dice` (ignore_empty=False: both masks empty -> 1, only one empty -> 0).
HD95: MONAI's `compute_hausdorff_distance(percentile=95)` in mm (spacing of the grid) when SciPy is installed
(MONAI needs it for edges and distance transforms); otherwise an exact torch implementation of the same
definition (surface = mask minus its 6-connected erosion, distance of each surface voxel of one mask to the
nearest surface voxel of the other, 95th percentile of each direction, the larger of the two). Both masks empty
-> 0; only one empty -> the diagonal of the volume in mm (373.13 mm for the BraTS 240 x 240 x 155 grid, the
value the BraTS evaluation uses).
"""

import importlib.util
import math

import numpy as np
import torch
from monai.metrics import compute_dice

from .data import REGIONS, regions_from_labels

HAS_SCIPY = importlib.util.find_spec("scipy") is not None


def dice(pred, truth):
    """Dice of two boolean arrays (BraTS convention for empty masks)."""
    p = torch.as_tensor(np.asarray(pred, dtype=bool))[None, None].float()
    t = torch.as_tensor(np.asarray(truth, dtype=bool))[None, None].float()
    return float(compute_dice(p, t, include_background=True, ignore_empty=False)[0, 0])


def _surface(mask):
    """Voxels of a bool (D, H, W) tensor whose 6-neighbourhood leaves the mask (outside the array is empty)."""
    padded = torch.nn.functional.pad(mask[None, None].float(), (1, 1, 1, 1, 1, 1))[0, 0]
    eroded = padded[1:-1, 1:-1, 1:-1].clone()
    for axis in range(3):
        for shift in (0, 2):
            index = [slice(1, -1)] * 3
            index[axis] = slice(shift, shift + mask.shape[axis])
            eroded = torch.minimum(eroded, padded[tuple(index)])
    return mask & ~eroded.bool()


def _nearest_distances(points, targets, chunk=2048):
    out = torch.empty(len(points), dtype=torch.float64)
    for start in range(0, len(points), chunk):
        block = torch.cdist(points[start:start + chunk], targets)
        out[start:start + chunk] = block.min(dim=1).values
    return out


def _hd95_torch(pred, truth, spacing):
    spacing_t = torch.tensor(spacing, dtype=torch.float64)
    # Bounding box of both masks: every surface voxel lies inside it, so distances are unchanged.
    both = np.argwhere(pred | truth)
    low, high = both.min(0), both.max(0) + 1
    box = tuple(slice(a, b) for a, b in zip(low, high))
    p_surface = torch.nonzero(_surface(torch.from_numpy(np.ascontiguousarray(pred[box]))))
    t_surface = torch.nonzero(_surface(torch.from_numpy(np.ascontiguousarray(truth[box]))))
    p_points, t_points = p_surface.double() * spacing_t, t_surface.double() * spacing_t
    forward = np.percentile(_nearest_distances(p_points, t_points).numpy(), 95)
    backward = np.percentile(_nearest_distances(t_points, p_points).numpy(), 95)
    return float(max(forward, backward))


def hd95(pred, truth, spacing=(1.0, 1.0, 1.0)):
    """95th-percentile Hausdorff distance (mm) of two boolean (D, H, W) arrays; spacing in (D, H, W) order."""
    pred, truth = np.asarray(pred, dtype=bool), np.asarray(truth, dtype=bool)
    if not pred.any() and not truth.any():
        return 0.0
    if not pred.any() or not truth.any():
        return float(math.sqrt(sum((n * s) ** 2 for n, s in zip(pred.shape, spacing))))
    if HAS_SCIPY:
        from monai.metrics import compute_hausdorff_distance

        p = torch.from_numpy(pred)[None, None].float()
        t = torch.from_numpy(truth)[None, None].float()
        return float(compute_hausdorff_distance(p, t, include_background=True, percentile=95,
                                                spacing=list(spacing))[0, 0])
    return _hd95_torch(pred, truth, spacing)


def region_metrics(pred_labels, true_labels, spacing=None):
    """{"dice_WT": ..., "dice_TC": ..., "dice_ET": ..., ["hd95_WT": ... when spacing is given]} of two BraTS
    label maps (K, J, I); spacing (mm) in (I, J, K) order as the library's geometry gives it."""
    pred_regions, true_regions = regions_from_labels(pred_labels), regions_from_labels(true_labels)
    out = {}
    for i, region in enumerate(REGIONS):
        out[f"dice_{region}"] = dice(pred_regions[i], true_regions[i])
    if spacing is not None:
        spacing_dhw = tuple(float(s) for s in reversed(tuple(spacing)))
        for i, region in enumerate(REGIONS):
            out[f"hd95_{region}"] = hd95(pred_regions[i], true_regions[i], spacing_dhw)
    return out

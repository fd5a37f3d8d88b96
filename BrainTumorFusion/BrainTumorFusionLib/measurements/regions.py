"""Region volumes of a BraTS label map: necrosis, edema, enhancing tumor and the composite tumor core and whole
tumor."""

import numpy as np

from ..case import LABEL_EDEMA, LABEL_ENHANCING, LABEL_NECROTIC

REGIONS = ("NCR", "ED", "ET", "TC", "WT")


def region_volumes(labels: np.ndarray, voxel_volume_ml: float) -> dict[str, float]:
    """Volumes in mL of NCR, ED, ET and the composite regions TC = NCR + ET, WT = all tumor."""
    counts = {label: int(np.count_nonzero(labels == label)) for label in (LABEL_NECROTIC, LABEL_EDEMA,
                                                                          LABEL_ENHANCING)}
    ncr, ed, et = counts[LABEL_NECROTIC], counts[LABEL_EDEMA], counts[LABEL_ENHANCING]
    voxels = {"NCR": ncr, "ED": ed, "ET": et, "TC": ncr + et, "WT": ncr + ed + et}
    return {name: round(count * voxel_volume_ml, 3) for name, count in voxels.items()}

"""Where the real BraTS cases are (../shared/data/brats, never copied into the repository) and crops of them.

A plain module (not conftest.py), so every test folder imports it by one name."""

from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
BRATS_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "brats"
MODULE_DIR = REPO / "BrainTumorFusion"


def brats_case_dir(case_id="Brats18_CBICA_ABM_1"):
    path = BRATS_DIR / case_id
    if not path.is_dir():
        pytest.fail(f"Real test data missing: {path}. Check out ../shared beside the repository.")
    return path


def real_crop(size=(64, 64, 64), case_id="Brats18_CBICA_ABM_1"):
    """A (1, 4, *size) float32 crop centred on the tumor of a real case, z-scored per modality.

    Axis order is (K, J, I) = (D, H, W), the library's network convention.
    """
    import SimpleITK as sitk

    from BrainTumorFusionLib.modalities import MODALITIES

    folder = brats_case_dir(case_id)
    arrays = [sitk.GetArrayFromImage(sitk.ReadImage(str(folder / f"{case_id}_{m}.nii.gz"))) for m in MODALITIES]
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / f"{case_id}_seg.nii.gz")))
    centre = np.round(np.argwhere(seg > 0).mean(axis=0)).astype(int)
    slices = []
    for c, s, n in zip(centre, size, seg.shape):
        start = int(np.clip(c - s // 2, 0, max(n - s, 0)))
        slices.append(slice(start, start + s))
    crop = np.stack([a[tuple(slices)].astype(np.float32) for a in arrays])
    for channel in crop:
        nonzero = channel != 0
        if nonzero.any():
            channel[nonzero] = (channel[nonzero] - channel[nonzero].mean()) / (channel[nonzero].std() + 1e-8)
    return crop[None]

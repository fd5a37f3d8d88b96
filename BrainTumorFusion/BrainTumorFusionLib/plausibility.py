"""Is the content plausible? Inputs unlike the images the models were trained on, or where accuracy is known to
drop, and results outside what BraTS cases show.

Thresholds were measured on the 27 shared BraTS cases (../shared/data/brats) and given a margin, so none of them
fires there."""

import numpy as np

# Brain voxels compared per pair of volumes: enough for a correlation to 3 decimals, cheap on a 240³ grid.
SAMPLE = 20000


def brain_sample(image: np.ndarray) -> np.ndarray:
    """Flat indices of about SAMPLE voxels spread over the brain (non-zero in any channel of (C, K, J, I))."""
    brain = np.flatnonzero(np.any(image != 0, axis=0))
    return brain[:: max(brain.size // SAMPLE, 1)]


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation; 0 where either side is constant (no pattern to share)."""
    a, b = a - a.mean(), b - b.mean()
    scale = np.sqrt(np.dot(a, a) * np.dot(b, b))
    return float(np.dot(a, b) / scale) if scale > 0 else 0.0

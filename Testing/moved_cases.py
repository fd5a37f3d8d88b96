"""Real cases moved the way a hospital's series are: each sequence by its own random rigid transform (the head moves
between acquisitions), FLAIR on thick slices. Shared by the registration tests and Testing/benchmarks.

A plain module (not conftest.py), so every test folder imports it by one name."""

import numpy as np
import SimpleITK as sitk

MOVED_ROLES = ("t1", "t2", "flair")  # the reference, T1ce, stays


def random_rigid(rng: np.random.Generator, image: sitk.Image, max_degrees: float = 15.0,
                 max_mm: float = 15.0) -> sitk.Euler3DTransform:
    """A rigid transform about the image centre: each angle and each shift drawn uniformly up to the maxima."""
    transform = sitk.Euler3DTransform()
    transform.SetCenter(image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in image.GetSize()]))
    transform.SetRotation(*np.deg2rad(rng.uniform(-max_degrees, max_degrees, 3)))
    transform.SetTranslation(rng.uniform(-max_mm, max_mm, 3).tolist())
    return transform


def moved(image: sitk.Image, transform: sitk.Transform, spacing=None, pad_mm: float = 24.0) -> sitk.Image:
    """`image` seen through `transform` (new(x) = image(transform(x))) on a grid padded by pad_mm on every side, so
    the moved head stays whole; with `spacing` (e.g. (1, 1, 5)) on thicker voxels (linear interpolation)."""
    spacing = np.array(spacing or image.GetSpacing(), dtype=float)
    extent = np.array(image.GetSize()) * np.array(image.GetSpacing()) + 2 * pad_mm
    size = np.ceil(extent / spacing).astype(int)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    corner = np.array(image.TransformContinuousIndexToPhysicalPoint([-0.5] * 3)) - direction @ np.full(3, pad_mm)
    origin = corner + direction @ (spacing / 2)
    grid = sitk.Image([int(n) for n in size], sitk.sitkUInt8)
    grid.SetSpacing(spacing.tolist())
    grid.SetDirection(image.GetDirection())
    grid.SetOrigin(origin.tolist())
    return sitk.Resample(image, grid, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)


def moved_case(images: dict, seed: int, thick_flair=(1.0, 1.0, 5.0), max_degrees: float = 15.0,
               max_mm: float = 15.0) -> tuple[dict, dict]:
    """(role -> moved image, role -> the transform used) for role -> SimpleITK image of one aligned case. With
    max_degrees = max_mm = 0 the inputs only change grids (padded, FLAIR thick): the unmoved baseline."""
    rng = np.random.default_rng(seed)
    out, transforms = dict(images), {}
    for role in MOVED_ROLES:
        if role in images:
            transforms[role] = random_rigid(rng, images[role], max_degrees, max_mm)
            out[role] = moved(images[role], transforms[role], thick_flair if role == "flair" else None)
    return out, transforms


def read_images(case_dir) -> dict:
    """role -> SimpleITK image of a BraTS case folder (<id>_<role>.nii.gz)."""
    from pathlib import Path

    case_dir = Path(case_dir)
    return {role: sitk.ReadImage(str(case_dir / f"{case_dir.name}_{role}.nii.gz"))
            for role in ("t1", "t1ce", "t2", "flair")}


def write_moved_case(case_dir, out_dir, seed: int, **move):
    """A case folder `out_dir/<id>` holding the moved copy of a BraTS case (moved_case, with `move`'s max_degrees
    and max_mm), as NIfTI files; returns (the folder, role -> the transform used)."""
    from pathlib import Path

    case_dir = Path(case_dir)
    images, transforms = moved_case(read_images(case_dir), seed, **move)
    folder = Path(out_dir) / case_dir.name
    folder.mkdir(parents=True, exist_ok=True)
    for role, image in images.items():
        sitk.WriteImage(image, str(folder / f"{case_dir.name}_{role}.nii.gz"))
    return folder, transforms


def region_dice(labels: np.ndarray, truth: np.ndarray) -> dict:
    """Dice of WT, TC and ET (BraTS regions, Training.metrics) of two label maps on one grid."""
    from Training.metrics import region_metrics

    metrics = region_metrics(labels, truth)
    return {region: metrics[f"dice_{region}"] for region in ("WT", "TC", "ET")}

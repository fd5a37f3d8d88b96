"""Training samples: MONAI augmentation, modality dropout, the self-supervision cube, and a step-indexed dataset.

Every random choice of a sample is a pure function of (seed, global sample index): which case (a seeded
permutation per pass over the training cases), the crop, flips, intensity changes, dropped modalities and the
masked cube. A run resumed from step s therefore draws exactly the samples the uninterrupted run would have
drawn, whatever the number of DataLoader workers, and the ranks of a distributed run draw disjoint indices
(rank r of W takes indices ((s * W + r) * B + b) at step s, so within a pass no case is seen twice).
"""

import numpy as np
import torch
from monai.transforms import (
    CastToTyped,
    Compose,
    EnsureTyped,
    OneOf,
    RandAdjustContrastd,
    RandBiasFieldd,
    RandCropByLabelClassesd,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    Randomizable,
    RandScaleIntensityd,
    RandShiftIntensityd,
    SpatialPadd,
)
from torch.utils.data import Dataset, Sampler

from .data import load_cached

MAX_SEED = 2**31 - 1
INTENSITY_AUGMENTATIONS = ("basic", "scanner")
CORE_CASE_FRACTION = 0.25  # a case whose necrotic / non-enhancing core (TC minus ET) exceeds this share of WT


class KeepBackground(Randomizable):
    """Zero again, after intensity changes, the voxels that were background (zero in every channel) before:
    the networks read zero as "outside the brain", as the library's preprocessing writes it."""

    def __init__(self, transforms):
        self.transforms = Compose(transforms)

    def set_random_state(self, seed=None, state=None):
        self.transforms.set_random_state(seed=seed, state=state)
        return self

    def randomize(self, data=None):
        pass  # the wrapped transforms draw their own numbers

    def __call__(self, data):
        brain = (data["image"] != 0).any(0, keepdim=True)
        data = self.transforms(data)
        data["image"] = data["image"] * brain
        return data


def intensity_transforms(kind="scanner", scale=0.1, shift=0.1):
    """Per-channel scale and shift ("basic"), plus for "scanner" what differs between scanners and protocols:
    a smooth bias field, gamma, Gaussian noise and blur, each on a share of the samples (nnU-Net-like
    probabilities), on brain voxels only."""
    if kind not in INTENSITY_AUGMENTATIONS:
        raise ValueError(f"Intensity augmentation must be one of {INTENSITY_AUGMENTATIONS}, not {kind!r}.")
    basic = [RandScaleIntensityd(keys="image", factors=scale, prob=1.0, channel_wise=True),
             RandShiftIntensityd(keys="image", offsets=shift, prob=1.0, channel_wise=True)]
    if kind == "basic":
        return basic
    return [KeepBackground([
        RandBiasFieldd(keys="image", coeff_range=(0.0, 0.3), prob=0.3),
        RandAdjustContrastd(keys="image", gamma=(0.7, 1.5), prob=0.3, retain_stats=True),
        RandGaussianSmoothd(keys="image", sigma_x=(0.5, 1.0), sigma_y=(0.5, 1.0), sigma_z=(0.5, 1.0), prob=0.1),
        RandGaussianNoised(keys="image", std=0.1, prob=0.15),
        *basic])]


def augmentation(patch_size, pos=2.0, neg=1.0, core_crops=0.0, intensity="scanner"):
    """MONAI transforms for one training sample of {"image": (4, D, H, W), "regions": (3, D, H, W)}.

    Pads to at least the patch (zero = background of the z-scored image); crops a patch centred, with
    probability `core_crops`, on a voxel of WT, TC or ET (one region drawn uniformly: the core gets two thirds
    of these crops), else on tumor with probability pos / (pos + neg) and on a brain voxel otherwise; flips each
    axis with probability 0.5; then `intensity_transforms(intensity)`.
    """
    keys, size = ("image", "regions"), tuple(patch_size)
    tumor_or_brain = RandCropByPosNegLabeld(keys=keys, label_key="regions", spatial_size=size, pos=pos, neg=neg,
                                            num_samples=1, image_key="image", image_threshold=0.0)
    crop = tumor_or_brain
    if core_crops > 0:
        by_region = RandCropByLabelClassesd(keys=keys, label_key="regions", spatial_size=size, ratios=[1, 1, 1],
                                            num_samples=1, warn=False)
        crop = OneOf([by_region, tumor_or_brain], weights=[core_crops, 1.0 - core_crops])
    return Compose([
        EnsureTyped(keys=keys, data_type="tensor", track_meta=False),
        SpatialPadd(keys=keys, spatial_size=size),
        crop,
        CastToTyped(keys="image", dtype=torch.float32),  # cases stay float16 in memory; patches are float32
        RandFlipd(keys=keys, prob=0.5, spatial_axis=0),
        RandFlipd(keys=keys, prob=0.5, spatial_axis=1),
        RandFlipd(keys=keys, prob=0.5, spatial_axis=2),
        *intensity_transforms(intensity),
    ])


def drop_modalities(image, present, rng, max_dropped=2, rate=0.5, weights=None):
    """With probability `rate`, remove 1..max_dropped of the present modalities (uniform count; chosen with
    the relative `weights`, (4,) in MODALITIES order, default equal). rate 2/3 with max_dropped 2 is a count
    uniform over 0, 1, 2.

    image: (4, ...) tensor, modified in place (dropped channels set to 0); present: (4,) bool numpy array of
    the modalities the case has. Never drops every present modality. Returns the new (4,) bool mask.
    """
    present = np.array(present, dtype=bool)
    available = np.flatnonzero(present)
    limit = min(int(max_dropped), len(available) - 1)
    count = int(rng.integers(1, limit + 1)) if limit > 0 and rng.random() < rate else 0
    chance = np.ones(len(present)) if weights is None else np.asarray(weights, dtype=float)
    chance = chance[available] / chance[available].sum()
    dropped = rng.choice(available, size=count, replace=False, p=chance) if count else np.array([], dtype=int)
    present[dropped] = False
    for channel in np.flatnonzero(~present):
        image[channel] = 0
    return present


def cube_box(patch_shape, cube_voxels, rng):
    """(start_d, start_h, start_w, size_d, size_h, size_w) of a cube inside a patch, uniformly placed."""
    sizes = [min(int(c), int(p)) for c, p in zip(cube_voxels, patch_shape)]
    starts = [int(rng.integers(0, p - s + 1)) for p, s in zip(patch_shape, sizes)]
    return np.array(starts + sizes, dtype=np.int64)


def cube_voxels(cube_mm, spacing):
    """Cube edge in voxels per (D, H, W) axis at the training spacing (I, J, K order, mm; None = 1 mm)."""
    spacing = (1.0, 1.0, 1.0) if spacing is None else tuple(float(s) for s in spacing)
    return tuple(max(int(round(cube_mm / s)), 1) for s in reversed(spacing))


def mask_cubes(image, boxes):
    """Copy of (B, C, D, H, W) with each sample's cube (boxes (B, 6)) set to 0 in every modality."""
    masked = image.clone()
    for sample, box in enumerate(boxes.tolist()):
        d, h, w, sd, sh, sw = box
        masked[sample, :, d:d + sd, h:h + sh, w:w + sw] = 0
    return masked


class CaseCache:
    """Cached cases read from their .npz files, kept in memory (float16, as stored) up to `max_cases`, least
    recently used out. Helps when every training case fits (e.g. a few hundred cases at 2 mm, about 2 MB each);
    with more cases than that the samples' random order makes most reads misses anyway."""

    def __init__(self, paths, max_cases=64):
        self.paths, self.max_cases, self.loaded = dict(paths), max_cases, {}

    def __getitem__(self, case_id):
        if case_id in self.loaded:
            self.loaded[case_id] = self.loaded.pop(case_id)  # most recently used last
            return self.loaded[case_id]
        data = load_cached(self.paths[case_id], np.float16)
        if self.max_cases > 0:
            while len(self.loaded) >= self.max_cases:
                self.loaded.pop(next(iter(self.loaded)))
            self.loaded[case_id] = data
        return data


def repeated_core_cases(case_ids, paths, repeats):
    """case_ids with each case whose necrotic / non-enhancing core (TC minus ET) exceeds CORE_CASE_FRACTION of
    its WT listed `repeats` times, so that a pass over the data shows it that often (the low-grade-looking
    cores that the models labelled edema)."""
    if repeats <= 1:
        return list(case_ids)
    listed = []
    for case_id in case_ids:
        with np.load(paths[case_id]) as stored:  # the regions alone, not the image
            wt, tc, et = (int(r.sum()) for r in stored["regions"])
        listed += [case_id] * (repeats if tc - et > CORE_CASE_FRACTION * max(wt, 1) else 1)
    return listed


class PatchDataset(Dataset):
    """Training patches indexed by global sample number (see the module docstring).

    Returns dicts of image (4, *patch) float32, regions (3, *patch) float32, present (4,) bool and, when
    `cube` (voxels per axis) is given, box (6,) int64: the cube to mask for self-supervision.
    """

    def __init__(self, case_ids, paths, patch_size, seed=0, modality_dropout=False, max_dropped=2, cube=None,
                 pos=2.0, neg=1.0, max_cached=32, dropout_rate=0.5, dropout_weights=None, core_crops=0.0,
                 core_case_repeats=1, intensity="scanner"):
        if not case_ids:
            raise ValueError("No training case.")
        self.cache = CaseCache({c: paths[c] for c in case_ids}, max_cached)
        self.case_ids = repeated_core_cases(sorted(case_ids), paths, core_case_repeats)
        self.patch_size, self.seed = tuple(patch_size), int(seed)
        self.modality_dropout, self.max_dropped, self.cube = modality_dropout, max_dropped, cube
        self.dropout_rate, self.dropout_weights = dropout_rate, dropout_weights
        self.transform = augmentation(self.patch_size, pos=pos, neg=neg, core_crops=core_crops, intensity=intensity)

    def __len__(self):
        return 2**62  # indices are global sample numbers; the sampler decides which are drawn

    def case_of(self, index):
        n = len(self.case_ids)
        epoch, position = divmod(int(index), n)
        order = np.random.default_rng([self.seed, 0, epoch]).permutation(n)
        return self.case_ids[order[position]]

    def __getitem__(self, index):
        case = self.cache[self.case_of(index)]
        rng = np.random.default_rng([self.seed, 1, int(index)])
        self.transform.set_random_state(seed=int(rng.integers(MAX_SEED)))
        sample = self.transform({"image": case["image"], "regions": case["regions"]})[0]
        image = torch.as_tensor(sample["image"], dtype=torch.float32).clone().contiguous()  # own memory
        present = np.array(case["present"], dtype=bool)
        if self.modality_dropout:
            present = drop_modalities(image, present, rng, self.max_dropped, self.dropout_rate, self.dropout_weights)
        out = {"image": image, "regions": torch.as_tensor(sample["regions"]).float().contiguous(),
               "present": torch.from_numpy(present)}
        if self.cube is not None:
            out["box"] = torch.from_numpy(cube_box(self.patch_size, self.cube, rng))
        return out


class StepSampler(Sampler):
    """Global sample indices of steps start..stop-1 for one rank: ((s * world + rank) * batch + b)."""

    def __init__(self, start_step, stop_step, batch_size, rank=0, world_size=1):
        self.start, self.stop, self.batch = int(start_step), int(stop_step), int(batch_size)
        self.rank, self.world = int(rank), int(world_size)

    def __iter__(self):
        for step in range(self.start, self.stop):
            base = (step * self.world + self.rank) * self.batch
            yield from range(base, base + self.batch)

    def __len__(self):
        return max(self.stop - self.start, 0) * self.batch

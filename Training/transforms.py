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
    RandCropByPosNegLabeld,
    RandFlipd,
    RandScaleIntensityd,
    RandShiftIntensityd,
    SpatialPadd,
)
from torch.utils.data import Dataset, Sampler

from .data import load_cached

MAX_SEED = 2**31 - 1


def augmentation(patch_size, pos=2.0, neg=1.0, scale=0.1, shift=0.1):
    """MONAI transforms for one training sample of {"image": (4, D, H, W), "regions": (3, D, H, W)}.

    Pads to at least the patch (zero = background of the z-scored image), crops a patch centred on tumor with
    probability pos / (pos + neg) (else on a brain voxel), flips each axis with probability 0.5, then scales
    and shifts intensities per channel.
    """
    keys = ("image", "regions")
    return Compose([
        EnsureTyped(keys=keys, data_type="tensor", track_meta=False),
        SpatialPadd(keys=keys, spatial_size=tuple(patch_size)),
        RandCropByPosNegLabeld(keys=keys, label_key="regions", spatial_size=tuple(patch_size), pos=pos, neg=neg,
                               num_samples=1, image_key="image", image_threshold=0.0),
        CastToTyped(keys="image", dtype=torch.float32),  # cases stay float16 in memory; patches are float32
        RandFlipd(keys=keys, prob=0.5, spatial_axis=0),
        RandFlipd(keys=keys, prob=0.5, spatial_axis=1),
        RandFlipd(keys=keys, prob=0.5, spatial_axis=2),
        RandScaleIntensityd(keys="image", factors=scale, prob=1.0, channel_wise=True),
        RandShiftIntensityd(keys="image", offsets=shift, prob=1.0, channel_wise=True),
    ])


def drop_modalities(image, present, rng, max_dropped=2):
    """Randomly remove 0..max_dropped of the present modalities (uniform count, uniform choice).

    image: (4, ...) tensor, modified in place (dropped channels set to 0); present: (4,) bool numpy array of
    the modalities the case has. Never drops every present modality. Returns the new (4,) bool mask.
    """
    present = np.array(present, dtype=bool)
    available = np.flatnonzero(present)
    limit = min(int(max_dropped), len(available) - 1)
    count = int(rng.integers(0, limit + 1)) if limit > 0 else 0
    dropped = rng.choice(available, size=count, replace=False) if count else np.array([], dtype=int)
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


class PatchDataset(Dataset):
    """Training patches indexed by global sample number (see the module docstring).

    Returns dicts of image (4, *patch) float32, regions (3, *patch) float32, present (4,) bool and, when
    `cube` (voxels per axis) is given, box (6,) int64: the cube to mask for self-supervision.
    """

    def __init__(self, case_ids, paths, patch_size, seed=0, modality_dropout=False, max_dropped=2, cube=None,
                 pos=2.0, neg=1.0, max_cached=32):
        if not case_ids:
            raise ValueError("No training case.")
        self.case_ids = sorted(case_ids)
        self.cache = CaseCache({c: paths[c] for c in self.case_ids}, max_cached)
        self.patch_size, self.seed = tuple(patch_size), int(seed)
        self.modality_dropout, self.max_dropped, self.cube = modality_dropout, max_dropped, cube
        self.transform = augmentation(self.patch_size, pos=pos, neg=neg)

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
            present = drop_modalities(image, present, rng, self.max_dropped)
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

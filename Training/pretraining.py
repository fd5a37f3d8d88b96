"""SwinFUSE self-supervised pretraining, a recipe of the shared loop (Training.loop): every modality is a
separate single-channel view.

Per step, a batch of B brain crops (the training cases of the split; no labels are read) and one pair of
distinct modalities (m1, m2) drawn for the whole batch. Each crop gives two views, its m1 channel and its m2
channel. Each view is rotated by a random multiple of 90 degrees in the H-W plane and gets random cubes zeroed
(inpainting). The network's `pretrain_forward` sees the 2B single-channel views; the loss is

    w_inpaint * L1(reconstruction, rotated clean view) + w_rotation * CE(rotation class)
    + w_contrast * NT-Xent(view m1 of crop i <-> view m2 of crop i) - w_density * JSD(KDE_m1, KDE_m2)

(NT-Xent is MONAI's ContrastiveLoss) where the densities are estimated on the voxels of the deepest Swin features
of the m1 views and of the m2 views. The paper subtracts the JSD term (see ssl_losses for the sign). Fine-tuning
then starts from the pretrained weights with
`python -m Training train --network swinfuse --init-from <run>/checkpoints/last.pt`.

Every random choice is a pure function of (seed, step, sample), so a resumed run (`--resume`) draws exactly the
views the uninterrupted run would have drawn.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import ContrastiveLoss

from . import distributed
from .config import RunConfig, option
from .data import cache_path, discover, load_cached, prepare_cache
from .loop import MethodAsForward, Recipe, Stage, run
from .network_recipes import RECIPES, recipe_of
from .ssl_losses import kde_jsd, voxel_features


@dataclass
class PretrainConfig(RunConfig):
    network: str = option("swinfuse")
    run_dir: str = option("runs/swinfuse-pretrain")
    split_file: str = option("", 'the training cases of this split are the pretraining data')
    steps: int = option(300, 'optimizer steps in total')
    lr: float = option(5e-4)
    schedule: str = option("cosine")
    warmup_steps: int = option(20)
    mask_cubes: int = option(4, 'zeroed cubes per view')
    mask_cube_mm: float = option(24.0, 'side of each zeroed cube (mm)')
    temperature: float = option(0.5, 'NT-Xent')
    inpaint_weight: float = option(1.0, 'weight of the L1 inpainting term')
    rotation_weight: float = option(1.0, 'weight of the rotation cross-entropy')
    contrast_weight: float = option(1.0, 'weight of the NT-Xent term')
    density_weight: float = option(1.0, 'subtracted, as in the paper; negative = density matching')
    checkpoint_every: int = option(50)
    validate_every: int = option(0, 'pretraining has no validation')


# ---------------------------------------------------------------------------------------------- views


def random_crop(image, patch_size, rng):
    """(C, *patch) crop of (C, D, H, W) at a uniform position; zero-padded (background) where smaller."""
    shape = image.shape[1:]
    pad = [(0, 0)] + [(0, max(p - s, 0)) for s, p in zip(shape, patch_size)]
    image = np.pad(image, pad) if any(p for _, p in pad) else image
    starts = [int(rng.integers(0, s - p + 1)) for s, p in zip(image.shape[1:], patch_size)]
    return image[(slice(None),) + tuple(slice(a, a + p) for a, p in zip(starts, patch_size))]


def zero_cubes(view, count, edge, rng):
    """Copy of (1, D, H, W) with `count` cubes of `edge` voxels zeroed at uniform positions."""
    masked = view.copy()
    for _ in range(count):
        starts = [int(rng.integers(0, max(s - e, 0) + 1)) for s, e in zip(view.shape[1:], edge)]
        masked[(slice(None),) + tuple(slice(a, a + e) for a, e in zip(starts, edge))] = 0
    return masked


def modality_pair(seed, step, present):
    """Two distinct modalities (channel indices) for a step, drawn among those present in every crop."""
    available = np.flatnonzero(present)
    if len(available) < 2:
        raise ValueError("Pretraining needs at least two modalities present in the crops of a step.")
    rng = np.random.default_rng([seed, 2, int(step)])
    first, second = rng.choice(available, size=2, replace=False)
    return int(first), int(second)


def pretraining_batch(config, cases, step, cube, rank=0, world_size=1):
    """Inputs and targets of one step of one rank: {"views" (2B, 1, *patch) masked, "targets" (2B, 1, *patch)
    clean, "rotations" (2B,) int64, "pair" (m1, m2)}. Views 0..B-1 are the m1 views, B..2B-1 the m2 views."""
    ids = sorted(cases)
    crops, present = [], np.ones(4, dtype=bool)
    for b in range(config.batch_size):
        index = (step * world_size + rank) * config.batch_size + b
        permutation = np.random.default_rng([config.seed, 0, index // len(ids)]).permutation(len(ids))
        case = cases[ids[permutation[index % len(ids)]]]
        rng = np.random.default_rng([config.seed, 1, index])
        crops.append((random_crop(case["image"], config.patch_size, rng), rng))
        present &= case["present"]
    m1, m2 = modality_pair(config.seed, step, present)
    views, targets, rotations = [], [], []
    for channel in (m1, m2):
        for crop, rng in crops:
            k = int(rng.integers(0, 4))
            clean = np.rot90(crop[channel:channel + 1].astype(np.float32), k, axes=(2, 3)).copy()
            targets.append(clean)
            views.append(zero_cubes(clean, config.mask_cubes, cube, rng))
            rotations.append(k)
    return {"views": torch.from_numpy(np.stack(views)), "targets": torch.from_numpy(np.stack(targets)),
            "rotations": torch.tensor(rotations, dtype=torch.int64), "pair": (m1, m2)}


# ---------------------------------------------------------------------------------------------- loss


def pretraining_loss(out, batch, config):
    """(total, parts) of the pretraining outputs of one batch (see the module docstring)."""
    n = batch["views"].shape[0] // 2
    inpaint = F.l1_loss(out.reconstruction.float(), batch["targets"])
    rotation = F.cross_entropy(out.rotation_logits.float(), batch["rotations"])
    contrast = ContrastiveLoss(config.temperature)(out.projection[:n].float(), out.projection[n:].float())
    density = kde_jsd(voxel_features(out.deepest[:n]), voxel_features(out.deepest[n:]))
    total = (config.inpaint_weight * inpaint + config.rotation_weight * rotation
             + config.contrast_weight * contrast - config.density_weight * density)
    parts = {"inpaint": inpaint, "rotation": rotation, "contrast": contrast, "jsd": density, "total": total}
    return total, {k: float(v.detach()) for k, v in parts.items()}


# ---------------------------------------------------------------------------------------------- recipe


class PretrainingRecipe(Recipe):
    kind = "pretraining"

    def __init__(self, config: PretrainConfig):
        super().__init__(config)
        if not recipe_of(config.network).pretrainable:
            available = sorted(name for name, recipe in RECIPES.items() if recipe.pretrainable)
            raise ValueError(f"Network '{config.network}' has no self-supervised pretraining "
                             f"(available: {', '.join(available)}).")
        if not config.split_file:
            raise ValueError("Pretraining needs --split-file: its training cases are the pretraining data.")
        self.cube = tuple(max(int(round(config.mask_cube_mm / s)), 1) for s in reversed(config.spacing or (1, 1, 1)))

    def prepare(self, context, run_dir):
        """The split's training cases, prepared into the cache when missing and held in memory."""
        config = self.config
        split = json.loads(Path(config.split_file).read_text())
        available = discover(config.data_dir)
        missing = sorted(set(split["train"]) - set(available))
        if missing:
            raise ValueError(f"{config.split_file} names cases missing from {config.data_dir}: "
                             f"{', '.join(missing[:5])}.")
        needed = {c: available[c] for c in split["train"]}
        if context.main:
            prepare_cache(needed, config.cache_dir, config.spacing, progress=False)
        distributed.barrier(context)
        self.cases = {c: load_cached(cache_path(config.cache_dir, config.spacing, c)) for c in needed}
        self.split = split

    def stages(self, network):
        return [Stage("pretrain", self.config.steps, find_unused_parameters=True)]  # the segmentation head

    def wrap(self, network, stage):
        return MethodAsForward(network, "pretrain_forward")

    def batches(self, stage, start, stop, context):
        for step in range(start, stop):
            yield pretraining_batch(self.config, self.cases, step, self.cube, context.rank, context.world_size)

    def loss(self, model, batch, stage, stage_step):
        return pretraining_loss(model(batch["views"]), batch, self.config)


def pretrain(config, resume=False, progress=True, callback=None):
    """Run (or continue) a pretraining run (see Training.loop.run for the result and the callback)."""
    config = PretrainConfig.from_dict(config) if isinstance(config, dict) else config
    return run(PretrainingRecipe, config, resume, progress, callback)

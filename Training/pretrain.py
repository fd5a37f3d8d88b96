"""SwinFUSE self-supervised pretraining: every modality is a separate single-channel view.

Per step, a batch of B brain crops (the training cases of the split; no labels are read) and one pair of
distinct modalities (m1, m2) drawn for the whole batch. Each crop gives two views, its m1 channel and its m2
channel. Each view is rotated by a random multiple of 90 degrees in the H-W plane and gets random cubes zeroed
(inpainting). The network's `pretrain_forward` sees the 2B single-channel views; the loss is
(Training.ssl_losses)

    w_inpaint * L1(reconstruction, rotated clean view) + w_rotation * CE(rotation class)
    + w_contrast * NT-Xent(view m1 of crop i <-> view m2 of crop i) - w_density * JSD(KDE_m1, KDE_m2)

where the densities are estimated on the voxels of the deepest Swin features of the m1 views and of the m2
views. The paper subtracts the JSD term (see ssl_losses for the sign). Fine-tuning then starts from the
pretrained weights with `python -m Training train --network swinfuse --init-from <run>/checkpoints/last.pt`.

Every random choice is a pure function of (seed, step, sample), so a resumed run (`--resume`) draws exactly the
views the uninterrupted run would have drawn; checkpoints are atomic (Training.checkpoint).
"""

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from . import checkpoint as ckpt
from .config import RecordedConfig
from .data import cache_path, discover, load_cached, prepare_cache, write_json
from .models import build_network, resolve_config
from .ssl_losses import kde_jsd, nt_xent, voxel_features
from .train import cpu_name

log = logging.getLogger(__name__)

PRETRAINABLE = {"swinfuse"}
RUNTIME_FIELDS = {"data_dir", "cache_dir", "steps", "checkpoint_every", "threads", "log_every"}


@dataclass
class PretrainConfig(RecordedConfig):
    network: str = "swinfuse"
    network_config: Optional[dict] = None  # None = the compact preset (Training.models.COMPACT)
    data_dir: str = ""
    cache_dir: str = ""
    run_dir: str = "runs/swinfuse-pretrain"
    split_file: str = ""  # the training cases of this split are the pretraining data
    spacing: Optional[list] = field(default_factory=lambda: [2.0, 2.0, 2.0])
    patch_size: list = field(default_factory=lambda: [64, 64, 64])
    batch_size: int = 2  # crops per step; each gives two single-modality views
    steps: int = 300
    lr: float = 5e-4
    weight_decay: float = 1e-5
    warmup_steps: int = 20
    grad_clip: float = 1.0
    mask_cubes: int = 4  # zeroed cubes per view
    mask_cube_mm: float = 24.0
    temperature: float = 0.5  # NT-Xent
    inpaint_weight: float = 1.0
    rotation_weight: float = 1.0
    contrast_weight: float = 1.0
    density_weight: float = 1.0  # subtracted, as in the paper; negative = density matching
    checkpoint_every: int = 50
    log_every: int = 10
    seed: int = 0
    threads: int = 0


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


def pretraining_batch(config, cases, step, cube):
    """Inputs and targets of one step: {"views" (2B, 1, *patch) masked, "targets" (2B, 1, *patch) clean,
    "rotations" (2B,) int64, "pair" (m1, m2)}. Views 0..B-1 are the m1 views, B..2B-1 the m2 views."""
    ids = sorted(cases)
    crops, present = [], np.ones(4, dtype=bool)
    for b in range(config.batch_size):
        index = step * config.batch_size + b
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


def pretraining_loss(network, batch, config):
    """(total, parts) for one batch (see the module docstring)."""
    out = network.pretrain_forward(batch["views"])
    n = batch["views"].shape[0] // 2
    inpaint = F.l1_loss(out.reconstruction.float(), batch["targets"])
    rotation = F.cross_entropy(out.rotation_logits.float(), batch["rotations"])
    contrast = nt_xent(out.projection[:n], out.projection[n:], config.temperature)
    density = kde_jsd(voxel_features(out.deepest[:n]), voxel_features(out.deepest[n:]))
    total = (config.inpaint_weight * inpaint + config.rotation_weight * rotation
             + config.contrast_weight * contrast - config.density_weight * density)
    parts = {"inpaint": inpaint, "rotation": rotation, "contrast": contrast, "jsd": density, "total": total}
    return total, {k: float(v.detach()) for k, v in parts.items()}


# ---------------------------------------------------------------------------------------------- loop


def load_training_cases(config):
    """{case id: cached case} of the split's training cases (prepared into the cache when missing)."""
    split = json.loads(Path(config.split_file).read_text())
    available = discover(config.data_dir)
    missing = sorted(set(split["train"]) - set(available))
    if missing:
        raise ValueError(f"{config.split_file} names cases missing from {config.data_dir}: {', '.join(missing[:5])}.")
    needed = {c: available[c] for c in split["train"]}
    prepare_cache(needed, config.cache_dir, config.spacing, progress=False)
    return {c: load_cached(cache_path(config.cache_dir, config.spacing, c)) for c in needed}, split


def pretrain(config, resume=False, progress=True, callback=None):
    """Run (or continue) a pretraining run. Returns {"step", "last", "losses"}.

    callback(step), if given, runs after each step's checkpoint; an exception it raises stops the run there,
    as a kill would.
    """
    from tqdm import tqdm

    if isinstance(config, dict):
        config = PretrainConfig.from_dict(config)
    if config.network not in PRETRAINABLE:
        raise ValueError(f"Network '{config.network}' has no self-supervised pretraining "
                         f"(available: {', '.join(sorted(PRETRAINABLE))}).")
    if not config.split_file:
        raise ValueError("Pretraining needs --split-file: its training cases are the pretraining data.")
    if config.threads:
        torch.set_num_threads(config.threads)
    run_dir = Path(config.run_dir)
    last = run_dir / "checkpoints" / ckpt.LAST
    state = ckpt.load(last) if resume and last.is_file() else None
    if state is not None:
        runtime = {f: getattr(config, f) for f in RUNTIME_FIELDS}
        config = PretrainConfig.from_dict({**state["config"], **runtime})
    config.network_config = resolve_config(config.network, config.network_config, config.patch_size)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(config.to_dict(), run_dir / "config.json")
    cases, split = load_training_cases(config)

    torch.manual_seed(config.seed)
    network = build_network(config.network, config.network_config)
    optimizer = torch.optim.AdamW(network.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    warmup, total = max(config.warmup_steps, 1), max(config.steps, 1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min((s + 1) / warmup, 1.0) * 0.5 * (
        1 + math.cos(math.pi * min(s / total, 1.0))))
    step, elapsed = 0, 0.0
    if state is not None:
        network.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, elapsed = int(state["step"]), float(state["elapsed_seconds"])
        ckpt.set_rng_state(state["rng"][0])
        log.info("Resuming %s at step %d.", run_dir, step)
    cube = tuple(max(int(round(config.mask_cube_mm / s)), 1) for s in reversed(config.spacing or (1, 1, 1)))

    started, losses, window = time.perf_counter(), [], []

    def save():
        ckpt.save({"model": network.state_dict(), "optimizer": optimizer.state_dict(),
                   "scheduler": scheduler.state_dict(), "step": step, "rng": [ckpt.rng_state()],
                   "config": config.to_dict(), "split": split, "kind": "pretraining",
                   "elapsed_seconds": elapsed + time.perf_counter() - started,
                   "hardware": f"CPU {cpu_name()} ({torch.get_num_threads()} threads)"}, last)

    network.train()
    with ckpt.metrics_log(run_dir, step) as metrics, tqdm(total=config.steps, initial=step, unit="step",
                                                   desc=f"Pretraining {config.network}", disable=not progress) as bar:
        while step < config.steps:
            batch = pretraining_batch(config, cases, step, cube)
            loss, parts = pretraining_loss(network, batch, config)
            if not math.isfinite(parts["total"]):
                raise FloatingPointError(f"The loss is {parts['total']}; lower the learning rate (--lr).")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(network.parameters(), config.grad_clip)
            optimizer.step()
            scheduler.step()
            step += 1
            losses.append(parts["total"])
            window.append(parts)
            bar.update()
            bar.set_postfix(loss=f"{parts['total']:.3f}")
            if step % config.log_every == 0 or step == config.steps:
                averaged = {k: float(np.mean([w[k] for w in window])) for k in window[-1]}
                metrics.write(json.dumps({"step": step, "lr": optimizer.param_groups[0]["lr"],
                                          **{f"pretrain/{k}": v for k, v in averaged.items()}}) + "\n")
                metrics.flush()
                window = []
            if step % config.checkpoint_every == 0 or step == config.steps:
                save()
            if callback is not None:
                callback(step)
    if state is None and step == 0:
        save()
    return {"step": step, "last": last, "losses": losses}


def load_pretrained(network, path):
    """Load the weights of a checkpoint (pretraining or training) into `network` where names and shapes agree.

    Returns the number of tensors loaded. Raises ValueError with what to do when the file is not a checkpoint,
    nothing matches, or a matching name has another shape (a different configuration).
    """
    try:
        state = ckpt.load(path)
    except Exception as error:  # torch raises many types for unreadable files
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ValueError(f"Cannot read {path} ({reason}). Give the last.pt of a pretraining run.") from None
    weights = state.get("model") if isinstance(state, dict) else None
    if not isinstance(weights, dict):
        raise ValueError(f"{path} has no model weights. Give the last.pt of a pretraining run.")
    own = network.state_dict()
    mismatched = [k for k, v in weights.items() if k in own and own[k].shape != v.shape]
    if mismatched:
        raise ValueError(f"{path} was made with another network configuration ({mismatched[0]}: "
                         f"{tuple(weights[mismatched[0]].shape)} vs {tuple(own[mismatched[0]].shape)}). "
                         "Fine-tune with the pretraining run's --network-config.")
    shared = {k: v for k, v in weights.items() if k in own}
    if not shared:
        raise ValueError(f"No weight of {path} fits this network. Was it made for another network?")
    network.load_state_dict(shared, strict=False)
    return len(shared)

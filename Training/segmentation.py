"""Supervised segmentation: the recipe that `python -m Training train` runs in the shared loop (Training.loop).

Per step: a batch of augmented patches (Training.transforms), the network in training mode, Dice + BCE on the
three regions plus the network's auxiliary term (Training.losses; for hafb the masked-cube consistency on a
masked copy of the batch), as its recipe in Training.network_recipes says. Validation segments the validation
split with the library's sliding-window inference (`inference.predict_regions`) on the prepared cache; best.pt
keeps the best mean Dice among checkpoints whose worst case keeps its whole tumor (checkpoint_score).
"""

from pathlib import Path

import numpy as np
import torch

from BrainTumorFusionLib.engine.auto_choice import WORST_WT_FLOOR
from BrainTumorFusionLib.engine.inference import predict_regions
from BrainTumorFusionLib.engine.postprocessing import regions_to_labels

from . import distributed
from .config import TrainConfig
from .data import (
    REGIONS,
    cache_path,
    cached_split,
    discover,
    load_cached,
    load_or_make_split,
    prepare_cache,
    regions_from_labels,
    source_groups,
    write_json,
)
from .loop import Recipe, Stage, run
from .losses import SegmentationLoss
from .metrics import dice
from .network_recipes import aux_weight, recipe_of, uses_modality_dropout
from .transforms import PatchDataset, StepSampler, cube_voxels, mask_cubes


def padded_to(image: np.ndarray, size) -> tuple:
    """Zero-pad (C, D, H, W) at the end of each axis up to at least `size`; returns (padded, original shape)."""
    shape = image.shape[1:]
    pad = [(0, 0)] + [(0, max(s - n, 0)) for n, s in zip(shape, size)]
    return (np.pad(image, pad) if any(p for _, p in pad) else image), shape


def validation_dice(network, case_ids, paths, patch_size, context, overlap=0.5) -> dict:
    """Mean Dice per region over case_ids (split across ranks), by sliding-window inference on the cache.

    Probabilities go through the library's postprocessing (nested regions -> labels) before scoring, as in
    the real pipeline. Returns {"dice_WT", "dice_TC", "dice_ET", "dice_mean", "cases", "worst_WT",
    "worst_WT_case"}: the worst case's whole-tumor Dice shows a collapse that a mean hides.
    """
    # one row per case, filled by the rank that scores it: summing over ranks gathers them all
    per_case = [[0.0] * len(REGIONS) for _ in case_ids]
    for index in range(context.rank, len(case_ids), context.world_size):
        case = load_cached(paths[case_ids[index]])
        image, shape = padded_to(case["image"], patch_size)
        probabilities = predict_regions(network, image, tuple(patch_size), context.device, overlap=overlap)
        probabilities = probabilities[(slice(None),) + tuple(slice(0, n) for n in shape)]
        predicted = regions_from_labels(regions_to_labels(probabilities))
        per_case[index] = [dice(predicted[i], case["regions"][i]) for i in range(len(REGIONS))]
    flat = distributed.all_sum([value for row in per_case for value in row], context)
    rows = [flat[i:i + len(REGIONS)] for i in range(0, len(flat), len(REGIONS))]
    count = max(len(rows), 1)
    means = {f"dice_{region}": sum(row[i] for row in rows) / count for i, region in enumerate(REGIONS)}
    means["dice_mean"] = sum(means[f"dice_{r}"] for r in REGIONS) / len(REGIONS)
    means["cases"] = len(rows)
    if rows:
        worst = min(range(len(rows)), key=lambda i: rows[i][0])
        means["worst_WT"], means["worst_WT_case"] = rows[worst][0], case_ids[worst]
    return means


def checkpoint_score(result: dict) -> float:
    """best.pt's score: the mean Dice, less 1 when a validation case collapsed (WT below the catalogue's floor),
    so that any checkpoint without a collapse ranks above every one with a collapse."""
    return result["dice_mean"] - (1.0 if result["worst_WT"] < WORST_WT_FLOOR else 0.0)


def _worker_init(_):
    torch.set_num_threads(1)


class WithMaskedView(torch.nn.Module):
    """The network plus its masked view in one forward pass (one DistributedDataParallel forward): returns
    (logits of the clean batch, aux extended with the masked input's features)."""

    def __init__(self, network: torch.nn.Module, view):
        super().__init__()
        self.network, self.view = network, view

    def forward(self, x, present, masked):
        logits, aux = self.network(x, present)
        return logits, self.view(self.network, aux, masked)


class SegmentationRecipe(Recipe):
    kind = "segmentation"

    def __init__(self, config: TrainConfig):
        super().__init__(config)
        network = recipe_of(config.network)
        self.aux_weight = aux_weight(config)
        self.masked_view = network.masked_view if self.aux_weight > 0 else None
        self.takes_present = network.handles_missing_modalities
        self.modality_dropout = uses_modality_dropout(config)
        self.criterion = self.build_loss()
        find_unused = config.find_unused_parameters
        self.find_unused = network.find_unused_parameters if find_unused is None else find_unused

    def build_loss(self) -> torch.nn.Module:
        """The training loss (override for another): Dice + BCE on the three regions over the deep-supervision
        heads, plus the network's auxiliary term at its weight."""
        network = recipe_of(self.config.network)
        return SegmentationLoss(self.config.dice_weight, self.config.bce_weight, network.aux_term, self.aux_weight,
                                network.deep_supervision)

    def catalogue_entry(self, state: dict) -> dict:
        config, split = self.config, state["split"]
        world = int(state.get("world_size", 1))
        groups = sorted(set(split.get("groups", {}).get(c, "?") for c in split["train"]))
        recipe, weight = recipe_of(config.network), aux_weight(config)
        return {
            "title": f"{config.network} ({Path(config.run_dir).name})",
            "handles_missing_modalities": bool(uses_modality_dropout(config)),
            "split": {"stratified_by": split.get("stratified_by")},
            "training": {
                "device_hours": round(float(state.get("elapsed_seconds", 0.0)) * world / 3600.0, 3),
                "steps": int(state["step"]),
                "data": f"{len(split['train'])} training cases (BraTS; source groups {', '.join(groups)})",
                "batch_size": config.batch_size * world,
                "optimizer": f"AdamW lr {config.lr} wd {config.weight_decay}, {config.schedule} schedule",
                "loss": f"{config.dice_weight} Dice + {config.bce_weight} BCE"
                        + (f" + {weight} x {recipe.aux_description}" if weight else ""),
                **recipe.notes,
                "modality_dropout": bool(uses_modality_dropout(config)),
                "best_validation": state.get("best"),
            },
        }

    def prepare(self, context, run_dir: Path) -> None:
        """Split (recorded in run_dir/split.json) and cache paths; rank 0 discovers and prepares, the others wait."""
        config, split_path = self.config, run_dir / "split.json"
        split = None
        if context.main and config.data_dir:
            cases = discover(config.data_dir)
            groups = source_groups(cases, config.data_dir, config.groups_table)
            split = load_or_make_split(Path(config.split_file) if config.split_file else split_path, groups,
                                       config.val_fraction, config.seed, config.folds, config.fold)
            needed = {c: cases[c] for c in split["train"] + split["validation"]}
            prepare_cache(needed, config.cache_dir, config.spacing, progress=True)
        elif context.main:  # the prepared cache alone, e.g. on a GPU machine that got the cache but not the cases
            split = cached_split(config.split_file, config.cache_dir, config.spacing)
        if context.main and config.split_file and Path(config.split_file).resolve() != split_path.resolve():
            write_json(split, split_path)
        self.split = distributed.broadcast_object(split, context)
        distributed.barrier(context)
        self.paths = {c: cache_path(config.cache_dir, config.spacing, c)
                      for c in self.split["train"] + self.split["validation"]}

    def stages(self, network):
        return [Stage("train", self.config.steps, find_unused_parameters=self.find_unused)]

    def wrap(self, network, stage):
        return WithMaskedView(network, self.masked_view) if self.masked_view else network

    def batches(self, stage, start, stop, context):
        config = self.config
        dataset = PatchDataset(
            self.split["train"], self.paths, config.patch_size, seed=config.seed,
            modality_dropout=self.modality_dropout, max_dropped=config.max_dropped,
            cube=cube_voxels(config.ssl_cube_mm, config.spacing) if self.masked_view else None,
            pos=config.pos_neg[0], neg=config.pos_neg[1], max_cached=config.max_cached_cases,
            dropout_rate=config.dropout_rate, dropout_weights=config.dropout_weights, core_crops=config.core_crops,
            core_case_repeats=config.core_case_repeats, intensity=config.intensity_augmentation)
        return torch.utils.data.DataLoader(
            dataset, batch_size=config.batch_size,
            sampler=StepSampler(start, stop, config.batch_size, context.rank, context.world_size),
            num_workers=config.workers, worker_init_fn=_worker_init if config.workers else None,
            generator=torch.Generator().manual_seed(config.seed),  # keeps the global RNG stream untouched
            pin_memory=context.device.type == "cuda", persistent_workers=False)

    def loss(self, model, batch, stage, stage_step):
        x, present = batch["image"], batch["present"]
        if self.masked_view:
            logits, aux = model(x, present, mask_cubes(x, batch["box"]))
        else:
            output = model(x, present) if self.takes_present else model(x)
            logits, aux = output if isinstance(output, (tuple, list)) else (output, None)
        return self.criterion(logits, batch["regions"], aux, x.shape[0])

    def validate(self, network, stage, context):
        if not self.split["validation"]:
            return None
        result = validation_dice(network, self.split["validation"], self.paths, self.config.patch_size, context,
                                 self.config.val_overlap)
        result["score"] = checkpoint_score(result)
        result["message"] = (f"validation Dice WT {result['dice_WT']:.3f} TC {result['dice_TC']:.3f} "
                             f"ET {result['dice_ET']:.3f} (mean {result['dice_mean']:.3f}, {result['cases']} cases; "
                             f"worst WT {result['worst_WT']:.3f} on {result['worst_WT_case']})")
        return result


def train(config, resume: bool = False, progress: bool = True, callback=None) -> dict:
    """Train (or continue) a segmentation run (see Training.loop.run for the result and the callback)."""
    config = TrainConfig.from_dict(config) if isinstance(config, dict) else config
    return run(SegmentationRecipe, config, resume, progress, callback)

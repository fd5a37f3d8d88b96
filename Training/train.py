"""The training loop: one function, `train(config)`, for one process or for every rank under torchrun.

Per step: a batch of augmented patches (Training.transforms), the network in training mode, Dice + BCE on the
three regions plus the network's auxiliary term (Training.losses; for hafb the masked-cube consistency on a
masked copy of the batch), AdamW with a poly or cosine schedule, gradient clipping, autocast (bf16/fp16) and
channels-last on CUDA. Every `checkpoint_every` steps rank 0 writes run/checkpoints/last.pt atomically;
`resume=True` continues from it exactly (same weights, optimizer, schedule, RNG states and sample order).
Every `validate_every` steps the validation split is segmented with the library's sliding-window inference
(`inference.predict_regions`) on the prepared cache, and the best mean Dice is kept in best.pt.
"""

import inspect
import json
import logging
import math
import os
import platform
import time
import warnings
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from BrainTumorFusionLib.inference import predict_regions
from BrainTumorFusionLib.postprocessing import regions_to_labels

from . import checkpoint as ckpt
from . import distributed
from .config import TrainConfig
from .data import (REGIONS, cache_path, discover, load_cached, load_or_make_split, prepare_cache, regions_from_labels,
                   source_groups, write_json)
from .losses import MASKED_VIEW, SegmentationLoss, aux_weight
from .metrics import dice
from .models import MISSING_MODALITY_NETWORKS, build_network, resolve_config, run_network, unwrap
from .transforms import PatchDataset, StepSampler, cube_voxels, mask_cubes

log = logging.getLogger(__name__)

# Fields that may differ when a run is resumed (where and how fast it runs, how long); the others define the run.
RUNTIME_FIELDS = {"data_dir", "cache_dir", "steps", "checkpoint_every", "validate_every", "workers", "threads",
                  "device", "log_every", "max_cached_cases"}
_warned_tensorboard = False


# ---------------------------------------------------------------------------------------------- pieces


def uses_modality_dropout(config):
    return config.network in MISSING_MODALITY_NETWORKS if config.modality_dropout is None else config.modality_dropout


def uses_masked_view(config):
    return config.network in MASKED_VIEW and aux_weight(config.network, config.ssl_weight) > 0


def accepts_present(network):
    return "present" in inspect.signature(unwrap(network).forward).parameters


def lr_factor(config):
    """Multiplier of the base learning rate at a step: linear warm-up, then poly / cosine / constant."""
    total, warmup = max(config.steps, 1), max(config.warmup_steps, 0)

    def factor(step):
        if step < warmup:
            return (step + 1) / warmup
        progress = min((step - warmup) / max(total - warmup, 1), 1.0)
        if config.schedule == "poly":
            return (1.0 - progress) ** config.poly_power
        if config.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        if config.schedule == "constant":
            return 1.0
        raise ValueError(f"Unknown schedule '{config.schedule}' (poly, cosine or constant).")

    return factor


def autocast_dtype(config, device):
    if device.type != "cuda" or config.amp == "none":
        return None
    if config.amp == "bf16" or (config.amp == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


def cpu_name():
    try:
        with open("/proc/cpuinfo") as stream:
            for line in stream:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware(context):
    """What the run used, for the catalogue entry: e.g. '4 x NVIDIA H100 80GB HBM3' or 'CPU ... (2 cores)'."""
    if context.device.type == "cuda":
        name = torch.cuda.get_device_name(context.device)
    else:
        name = f"CPU {cpu_name()} ({torch.get_num_threads()} threads)"
    return f"{context.world_size} x {name}" if context.world_size > 1 else name


def summary_writer(folder):
    """TensorBoard SummaryWriter, or None (one warning) when tensorboard is not installed."""
    global _warned_tensorboard
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        if not _warned_tensorboard:
            warnings.warn("tensorboard is not installed: no TensorBoard logs (metrics.jsonl is still written). "
                          "pip install tensorboard to get them.", stacklevel=2)
            _warned_tensorboard = True
        return None
    return SummaryWriter(str(folder))


def _worker_init(_):
    torch.set_num_threads(1)


def padded_to(image, size):
    """Zero-pad (C, D, H, W) at the end of each axis up to at least `size`; returns (padded, original shape)."""
    shape = image.shape[1:]
    pad = [(0, 0)] + [(0, max(s - n, 0)) for n, s in zip(shape, size)]
    return (np.pad(image, pad) if any(p for _, p in pad) else image), shape


def validate(network, case_ids, paths, patch_size, context, overlap=0.5):
    """Mean Dice per region over case_ids (split across ranks), by sliding-window inference on the cache.

    Probabilities go through the library's postprocessing (nested regions -> labels) before scoring, as in
    the real pipeline. Returns {"WT": ..., "TC": ..., "ET": ..., "mean": ..., "cases": n}.
    """
    plain = unwrap(network)
    sums = [0.0] * (len(REGIONS) + 1)
    for case_id in case_ids[context.rank::context.world_size]:
        case = load_cached(paths[case_id])
        image, shape = padded_to(case["image"], patch_size)
        probabilities = predict_regions(plain, image, tuple(patch_size), context.device, overlap=overlap)
        probabilities = probabilities[(slice(None),) + tuple(slice(0, n) for n in shape)]
        predicted = regions_from_labels(regions_to_labels(probabilities))
        for i in range(len(REGIONS)):
            sums[i] += dice(predicted[i], case["regions"][i])
        sums[-1] += 1
    plain.train()
    totals = distributed.all_sum(sums, context)
    count = max(totals[-1], 1)
    means = {region: totals[i] / count for i, region in enumerate(REGIONS)}
    means["mean"] = sum(means[r] for r in REGIONS) / len(REGIONS)
    means["cases"] = int(totals[-1])
    return means


def gather_rng(context):
    """RNG states of every rank (rank order), for the checkpoint."""
    state = ckpt.rng_state()
    if not context.distributed:
        return [state]
    states = [None] * context.world_size
    torch.distributed.all_gather_object(states, state)
    return states


def prepare_data(config, context, run_dir):
    """Split (recorded in run_dir/split.json) and cache paths; rank 0 discovers and prepares, the others wait."""
    split_path = run_dir / "split.json"
    if context.main:
        cases = discover(config.data_dir)
        groups = source_groups(cases, config.data_dir, config.groups_table)
        split = load_or_make_split(Path(config.split_file) if config.split_file else split_path, groups,
                                   config.val_fraction, config.seed)
        if config.split_file and Path(config.split_file).resolve() != split_path.resolve():
            write_json(split, split_path)
        needed = {c: cases[c] for c in split["train"] + split["validation"]}
        prepare_cache(needed, config.cache_dir, config.spacing, progress=True)
    split = distributed.broadcast_object(split if context.main else None, context)
    distributed.barrier(context)
    paths = {c: cache_path(config.cache_dir, config.spacing, c) for c in split["train"] + split["validation"]}
    return split, paths


class WithMaskedView(torch.nn.Module):
    """The network plus its MASKED_VIEW function in one forward pass (one DistributedDataParallel forward):
    returns (logits of the clean batch, aux extended with the masked input's features)."""

    def __init__(self, network, view):
        super().__init__()
        self.network, self.view = network, view

    def forward(self, x, present, masked):
        logits, aux = run_network(self.network, x, present)
        return logits, self.view(self.network, aux, masked)


# ---------------------------------------------------------------------------------------------- loop


def train_step(model, batch, criterion, optimizer, device, masked_view=False, give_present=True, channels_last=False,
               amp_dtype=None, scaler=None, grad_clip=0.0):
    """One optimizer step on a batch from PatchDataset; returns the loss parts (floats).

    With masked_view, `model` is a WithMaskedView (possibly inside DistributedDataParallel) and also gets a
    copy of the batch with each sample's cube (batch["box"]) zeroed in every modality.
    """
    x = batch["image"].to(device, non_blocking=True)
    target = batch["regions"].to(device, non_blocking=True)
    present = batch["present"].to(device)
    n_clean = x.shape[0]
    masked = mask_cubes(x, batch["box"]) if masked_view else None
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
        masked = masked.contiguous(memory_format=torch.channels_last_3d) if masked is not None else None
    with torch.autocast("cuda", dtype=amp_dtype) if amp_dtype is not None else nullcontext():
        if masked_view:
            logits, aux = model(x, present, masked)
        else:
            logits, aux = run_network(model, x, present if give_present else None)
    loss, parts = criterion(logits, target, aux, n_clean)
    if not math.isfinite(parts["total"]):
        raise FloatingPointError(f"The loss is {parts['total']}; lower the learning rate (--lr) or check the data.")
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    else:
        loss.backward()
    if grad_clip > 0:
        parts["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip))
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return parts


def train(config, resume=False, progress=True, callback=None):
    """Train (or continue) a run. Returns {"step", "last", "best", "best_metric", "losses", "validation"}.

    `losses` holds this rank's total loss of every step run in this call (for tests and quick looks).
    callback(step, network, parts), if given, is called on every rank after each step (after that step's
    validation and checkpoint); an exception it raises stops the run there, as a kill would.
    """
    if isinstance(config, dict):
        config = TrainConfig.from_dict(config)
    context = distributed.setup(config.device)
    try:
        return _train(config, context, resume, progress, callback)
    finally:
        distributed.teardown(context)


def _train(config, context, resume, progress, callback):
    from tqdm import tqdm

    if config.threads:
        torch.set_num_threads(config.threads)
    run_dir = Path(config.run_dir)
    checkpoints = run_dir / "checkpoints"
    state = None
    if resume and (checkpoints / ckpt.LAST).is_file():
        state = ckpt.load(checkpoints / ckpt.LAST)
        stored = TrainConfig.from_dict(state["config"])
        changed = [f for f, v in config.to_dict().items()
                   if f not in RUNTIME_FIELDS and f != "network_config" and v != getattr(stored, f)]
        if changed and context.main:
            log.warning("Resuming with the checkpoint's settings; ignoring changed %s.", ", ".join(changed))
        runtime = {f: getattr(config, f) for f in RUNTIME_FIELDS}
        config = TrainConfig.from_dict({**stored.to_dict(), **runtime})
    elif resume and context.main:
        log.warning("No checkpoint in %s: starting from step 0.", checkpoints)

    if config.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    elif context.device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    config.network_config = resolve_config(config.network, config.network_config, config.patch_size)
    if context.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(config.to_dict(), run_dir / "config.json")
    split, paths = prepare_data(config, context, run_dir)
    if state is not None and state.get("split") and state["split"]["train"] != split["train"]:
        raise RuntimeError(f"{run_dir / 'split.json'} differs from the split of the checkpoint; restore it to resume.")

    torch.manual_seed(config.seed)  # identical initial weights on every rank
    network = build_network(config.network, config.network_config)
    if config.init_from and state is None:
        from .pretrain import load_pretrained

        loaded = load_pretrained(network, config.init_from)
        if context.main:
            log.info("Initialised %d of %d tensors from %s.", loaded, len(network.state_dict()), config.init_from)
    network = network.to(context.device)
    channels_last = config.channels_last and context.device.type == "cuda"
    if channels_last:
        network = network.to(memory_format=torch.channels_last_3d)
    optimizer = torch.optim.AdamW(network.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(config))
    amp_dtype = autocast_dtype(config, context.device)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None

    step, best, elapsed = 0, {"metric": -1.0, "step": 0}, 0.0
    torch.manual_seed(config.seed + 1000 * context.rank + 1)  # per-rank stream for dropout and the like
    if state is not None:
        network.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        step, best, elapsed = int(state["step"]), dict(state["best"]), float(state["elapsed_seconds"])
        if len(state["rng"]) == context.world_size:
            ckpt.set_rng_state(state["rng"][context.rank])
        else:
            log.warning("The checkpoint was written by %d ranks, this run has %d: random streams restart.",
                        len(state["rng"]), context.world_size)
            torch.manual_seed(config.seed + 1000 * context.rank + step)
        if context.main:
            log.info("Resuming %s at step %d.", run_dir, step)

    find_unused = config.find_unused_parameters
    if find_unused is None:
        find_unused = config.network == "swinfuse"  # its SSL heads have no part in fine-tuning
    masked_view = uses_masked_view(config)
    model = WithMaskedView(network, MASKED_VIEW[config.network]) if masked_view else network
    if context.distributed:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[context.device] if context.device.type == "cuda" else None,
            find_unused_parameters=find_unused)

    dataset = PatchDataset(
        split["train"], paths, config.patch_size, seed=config.seed, modality_dropout=uses_modality_dropout(config),
        max_dropped=config.max_dropped, cube=cube_voxels(config.ssl_cube_mm, config.spacing) if masked_view else None,
        pos=config.pos_neg[0], neg=config.pos_neg[1], max_cached=config.max_cached_cases)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=config.batch_size,
        sampler=StepSampler(step, config.steps, config.batch_size, context.rank, context.world_size),
        num_workers=config.workers, worker_init_fn=_worker_init if config.workers else None,
        generator=torch.Generator().manual_seed(config.seed),  # keeps the global RNG stream untouched
        pin_memory=context.device.type == "cuda", persistent_workers=False)
    criterion = SegmentationLoss(config.network, config.dice_weight, config.bce_weight,
                                 aux_weight(config.network, config.ssl_weight))
    give_present = accepts_present(network)

    writer, metrics_file = None, None
    if context.main:
        writer = summary_writer(run_dir / "tensorboard")
        metrics_file = ckpt.metrics_log(run_dir, step)

    def record(values):
        if metrics_file is not None:
            metrics_file.write(json.dumps(values) + "\n")
            metrics_file.flush()
        if writer is not None:
            for key, value in values.items():
                if key != "step" and isinstance(value, (int, float)):
                    writer.add_scalar(key, value, values["step"])

    def save(name):
        states = gather_rng(context)
        if not context.main:
            return None
        payload = {"model": network.state_dict(), "optimizer": optimizer.state_dict(),
                   "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler else {},
                   "step": step, "rng": states, "config": config.to_dict(), "split": split, "best": best,
                   "elapsed_seconds": elapsed + (time.perf_counter() - started),
                   "hardware": hardware(context), "world_size": context.world_size,
                   "versions": {"torch": str(torch.__version__)}}
        ckpt.save(payload, checkpoints / name)
        return checkpoints / name

    started = time.perf_counter()
    losses, validations, window = [], [], []
    bar = tqdm(total=config.steps, initial=step, desc=f"Training {config.network}", unit="step",
               disable=not (progress and context.main), dynamic_ncols=True)
    network.train()
    try:
        for batch in loader:
            step_start = time.perf_counter()
            parts = train_step(model, batch, criterion, optimizer, context.device, masked_view=masked_view,
                               give_present=give_present, channels_last=channels_last, amp_dtype=amp_dtype,
                               scaler=scaler, grad_clip=config.grad_clip)
            scheduler.step()
            step += 1
            losses.append(parts["total"])
            window.append({**parts, "seconds": time.perf_counter() - step_start})
            bar.update()
            bar.set_postfix(loss=f"{parts['total']:.4f}")

            if step % config.log_every == 0 or step == config.steps:
                averaged = {k: float(np.mean([w[k] for w in window if k in w])) for k in window[-1]}
                record({"step": step, "lr": optimizer.param_groups[0]["lr"],
                        **{f"train/{k}": v for k, v in averaged.items()}})
                window = []
            validate_now = config.validate_every and split["validation"] and (
                step % config.validate_every == 0 or step == config.steps)
            if validate_now:
                result = validate(network, split["validation"], paths, config.patch_size, context, config.val_overlap)
                validations.append({"step": step, **result})
                record({"step": step, **{f"val/dice_{k}": v for k, v in result.items() if k != "cases"}})
                if context.main:
                    bar.write(f"step {step}: validation Dice WT {result['WT']:.3f} TC {result['TC']:.3f} "
                              f"ET {result['ET']:.3f} (mean {result['mean']:.3f}, {result['cases']} cases)")
                if result["mean"] > best["metric"]:
                    best = {"metric": result["mean"], "step": step, **{k: result[k] for k in REGIONS}}
                    save(ckpt.BEST)
            if step % config.checkpoint_every == 0 or step == config.steps:
                save(ckpt.LAST)
            if callback is not None:
                callback(step, network, parts)
    finally:
        bar.close()
        if metrics_file is not None:
            metrics_file.close()
        if writer is not None:
            writer.close()
    if state is None and step == 0:
        save(ckpt.LAST)
    return {"step": step, "last": checkpoints / ckpt.LAST,
            "best": checkpoints / ckpt.BEST if (checkpoints / ckpt.BEST).is_file() else None,
            "best_metric": best, "losses": losses, "validation": validations}

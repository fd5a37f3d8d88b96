"""The one training loop. A recipe (Training.segmentation, Training.pretraining, Training.grading) supplies what
differs between kinds of training; the loop owns everything else.

The loop: device choice and the process group under torchrun, threads and determinism, the run folder
(config.json, metrics.jsonl, TensorBoard), resume from run/checkpoints/last.pt (same weights, optimizer, schedule,
RNG states of every rank and sample order), seeding, building and initialising the network, AdamW and a torch LR
schedule per stage, autocast (bf16 on capable CPUs too) and channels-last on CUDA, DistributedDataParallel, the NaN check / gradient
clipping / step sequence, the progress bar, validation every `validate_every` steps and at the end of each stage
(best.pt on the recipe's score), atomic checkpoints every `checkpoint_every` steps and at the end of each stage.

A recipe overrides the hooks of `Recipe` (nnU-Net v2's trainer is the model for the shape: variants override one
hook, not the loop).
"""

import json
import logging
import math
import os
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

import numpy as np
import torch
from tqdm import tqdm

from BrainTumorFusionLib import cpu
from BrainTumorFusionLib.engine import inference
from BrainTumorFusionLib.errors import InputError

from . import checkpoint as ckpt
from . import distributed
from .config import RunConfig
from .data import write_json
from .network_recipes import build_network, recipe_of, resolve_config

log = logging.getLogger(__name__)
MAX_SKIPPED_STEPS = 5  # consecutive steps with non-finite gradients before the run stops


@dataclass
class Stage:
    """A part of a run with its own optimizer and LR schedule over its own steps."""

    name: str
    steps: int
    parameters: Optional[list] = None  # what the optimizer trains; None = every parameter of the network
    find_unused_parameters: bool = False  # DDP: some parameters get no gradient in this stage
    keep: bool = False  # keep the weights at the end of the stage as checkpoints/<name>.pt


class Recipe:
    """What one kind of training supplies. Subclasses set `kind` and override the hooks."""

    kind = "segmentation"  # recorded in checkpoints

    def __init__(self, config: RunConfig):
        self.config = config
        self.split = None  # set by prepare(); recorded in checkpoints

    def prepare(self, context: distributed.Context, run_dir: Path) -> None:
        """Find and prepare the data; set self.split. Runs on every rank (rank 0 prepares, the others wait)."""
        raise NotImplementedError

    def build_network(self) -> torch.nn.Module:
        return build_network(self.config.network, self.config.network_config)

    def stages(self, network: torch.nn.Module) -> List[Stage]:
        return [Stage("train", self.config.steps)]

    def wrap(self, network: torch.nn.Module, stage: int) -> torch.nn.Module:
        """The module whose forward pass the loss calls (what DistributedDataParallel wraps)."""
        return network

    def batches(self, stage: int, start: int, stop: int, context: distributed.Context) -> Iterator[dict]:
        """This rank's batches of the stage's steps start .. stop - 1 (dicts; tensors are moved by the loop)."""
        raise NotImplementedError

    def loss(self, model: torch.nn.Module, batch: dict, stage: int, stage_step: int) -> Tuple[torch.Tensor, dict]:
        """(loss, parts as floats with 'total') of a batch; runs under autocast."""
        raise NotImplementedError

    def validate(self, network: torch.nn.Module, stage: int, context: distributed.Context) -> Optional[dict]:
        """Validation metrics (None = no validation). A 'score' entry (higher is better) keeps best.pt; a
        'message' entry is printed."""
        return None

    def checkpoint_extras(self) -> dict:
        return {}

    def catalogue_entry(self, state: dict) -> dict:
        """What this kind of model's catalogue entry says beyond the fields every entry has (export.write_entry):
        its title, task-specific fields, and its own `split` and `training` details, from the checkpoint `state`."""
        raise NotImplementedError(f"{type(self).__name__} runs are not exported into a model catalogue.")

    def configure_optimizer(self, parameters: list) -> torch.optim.Optimizer:
        """The optimizer of a stage over `parameters` (AdamW at the run's lr and weight decay; override for
        another). The loop builds one per stage and restores its state on resume."""
        return torch.optim.AdamW(parameters, lr=self.config.lr, weight_decay=self.config.weight_decay)


class MethodAsForward(torch.nn.Module):
    """A network method (e.g. `pretrain_forward`) as the forward pass, so that DistributedDataParallel, which
    synchronises gradients of what runs through forward, sees it."""

    def __init__(self, network: torch.nn.Module, method: str):
        super().__init__()
        self.network, self.method = network, method

    def forward(self, *args):
        return getattr(self.network, self.method)(*args)


# ---------------------------------------------------------------------------------------------- small pieces


def lr_scheduler(optimizer, config: RunConfig, steps: int):
    """torch's schedulers: linear warm-up over warmup_steps, then poly / cosine / constant to the stage's end."""
    warmup = min(max(config.warmup_steps, 0), max(steps - 1, 0))
    remaining = max(steps - warmup, 1)
    if config.schedule == "poly":
        main = torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=remaining, power=config.poly_power)
    elif config.schedule == "cosine":
        main = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=remaining)
    elif config.schedule == "constant":
        main = torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
    else:
        raise ValueError(f"Unknown schedule '{config.schedule}' (poly, cosine or constant).")
    if not warmup:
        return main
    ramp = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1.0 / warmup, total_iters=warmup)
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [ramp, main], milestones=[warmup])


def restore_scheduler(scheduler, state: dict) -> None:
    """Load a scheduler's state but keep the length it was built with: a run resumed with a larger --steps decays
    from its current rate to the end of the new total (torch's schedulers are chainable, each step a ratio)."""
    parts = [scheduler, *getattr(scheduler, "_schedulers", [])]
    lengths = [{k: getattr(p, k) for k in ("total_iters", "T_max") if hasattr(p, k)} for p in parts]
    scheduler.load_state_dict(state)
    for part, length in zip(parts, lengths):
        part.__dict__.update(length)


def autocast_dtype(config: RunConfig, device: torch.device) -> Optional[torch.dtype]:
    """--amp through the library's precision policy (inference.autocast_dtype): auto = bf16 on CUDA where supported
    (else fp16 with a gradient scaler), and on CPUs with native bf16 for networks whose recipe says bf16 trains them
    faster there (`NetworkRecipe.trains_faster_in_cpu_bf16`), else fp32; bf16 / fp16 force one (fp16 on CUDA only);
    none = fp32."""
    try:
        return inference.autocast_dtype({"none": "fp32"}.get(config.amp, config.amp), device,
                                        cpu_bf16_allowed=recipe_of(config.network).trains_faster_in_cpu_bf16,
                                        cuda_bf16=True)
    except InputError as error:
        raise ValueError(f"--amp {config.amp}: {error}") from None


def hardware(context: distributed.Context) -> str:
    """What the run used, for the catalogue entry: e.g. '4 x NVIDIA H100 80GB HBM3' or 'CPU ... (2 threads)'."""
    if context.device.type == "cuda":
        name = torch.cuda.get_device_name(context.device)
    else:
        name = f"CPU {cpu.probe().model_name} ({torch.get_num_threads()} threads)"
    return f"{context.world_size} x {name}" if context.world_size > 1 else name


def summary_writer(folder: Path):
    """TensorBoard SummaryWriter, or None with a warning when tensorboard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        warnings.warn("tensorboard is not installed: no TensorBoard logs (metrics.jsonl is still written). "
                      "pip install tensorboard to get them.", stacklevel=2)
        return None
    return SummaryWriter(str(folder))


def to_device(batch: dict, device: torch.device, channels_last: bool) -> dict:
    """The batch's tensors on the device; 5-D float tensors (images) channels-last when asked."""
    moved = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            value = value.to(device, non_blocking=True)
            if channels_last and value.dim() == 5 and value.is_floating_point():
                value = value.contiguous(memory_format=torch.channels_last_3d)
        moved[key] = value
    return moved


def optimizer_step(loss: torch.Tensor, total: float, optimizer, parameters: list, grad_clip: float,
                   scaler=None) -> Optional[float]:
    """Backward pass and step after the NaN check; returns the gradient norm before clipping, or None when the
    gradients were not finite and the step was skipped (as a gradient scaler does; bfloat16 kernels of some CPUs
    give such gradients now and then on tiny feature maps)."""
    if not math.isfinite(total):
        raise FloatingPointError(f"The loss is {total}; lower the learning rate (--lr) or check the data.")
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    else:
        loss.backward()
    norm = float(torch.nn.utils.clip_grad_norm_(parameters, grad_clip if grad_clip > 0 else math.inf))
    if scaler is not None:
        scaler.step(optimizer)  # skips the step itself when the gradients are not finite
        scaler.update()
    elif math.isfinite(norm):
        optimizer.step()
    return norm if math.isfinite(norm) else None


def gather_rng(context: distributed.Context) -> list:
    """RNG states of every rank (rank order), for the checkpoint."""
    state = ckpt.rng_state()
    if not context.distributed:
        return [state]
    states = [None] * context.world_size
    torch.distributed.all_gather_object(states, state)
    return states


# ---------------------------------------------------------------------------------------------- the loop


def run(recipe_class: type, config: RunConfig, resume: bool = False, progress: bool = True, callback=None) -> dict:
    """Train (or continue) a run of `recipe_class` with `config`. Returns {"step", "last", "best", "best_metric",
    "losses", "validation", "kept", "recipe"}.

    With `resume`, the run's last checkpoint gives the configuration (only the runtime fields of `config` apply).
    `losses` holds this rank's total loss of every step run in this call. callback(step, network, parts), if
    given, is called on every rank after each step (after that step's validation and checkpoint); an exception it
    raises stops the run there, as a kill would.
    """
    context = distributed.setup(config.device)
    try:
        return Loop(recipe_class, config, context, resume, progress, callback).run()
    finally:
        distributed.teardown(context)


class Loop:
    def __init__(self, recipe_class: type, config: RunConfig, context: distributed.Context, resume: bool,
                 progress: bool, callback):
        self.context, self.progress, self.callback = context, progress, callback
        self.run_dir = Path(config.run_dir)
        self.checkpoints = self.run_dir / "checkpoints"
        self.state = None
        if resume and (self.checkpoints / ckpt.LAST).is_file():
            self.state = ckpt.load(self.checkpoints / ckpt.LAST)
            config, changed = config.resumed(self.state["config"])
            if changed and context.main:
                log.warning("Resuming with the checkpoint's settings; ignoring changed %s.", ", ".join(changed))
        elif resume and context.main:
            log.warning("No checkpoint in %s: starting from step 0.", self.checkpoints)
        config.network_config = resolve_config(config.network, config.network_config, config.patch_size)
        self.config, self.recipe = config, recipe_class(config)
        self.step, self.elapsed, self.started = 0, 0.0, None
        self.best = {"metric": None, "step": 0}
        self.validations, self.losses, self.kept = [], [], {}

    # -- set-up

    def configure_torch(self):
        config, device = self.config, self.context.device
        if config.threads:
            torch.set_num_threads(config.threads)
        if config.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        elif device.type == "cuda":
            torch.backends.cudnn.benchmark = True

    def build(self):
        config, context = self.config, self.context
        torch.manual_seed(config.seed)  # identical initial weights on every rank
        network = self.recipe.build_network()
        if config.init_from and self.state is None:
            loaded = ckpt.load_matching_weights(network, config.init_from)
            if context.main:
                log.info("Initialised %d of %d tensors from %s.", loaded, len(network.state_dict()), config.init_from)
        network = network.to(context.device)
        if self.channels_last:
            network = network.to(memory_format=torch.channels_last_3d)
        torch.manual_seed(config.seed + 1000 * context.rank + 1)  # per-rank stream for dropout and the like
        if self.state is not None:
            network.load_state_dict(self.state["model"])
            self.step = int(self.state["step"])
            self.elapsed = float(self.state["elapsed_seconds"])
            self.best = dict(self.state.get("best") or self.best)
            self.validations = list(self.state.get("validation", []))
            if len(self.state["rng"]) == context.world_size:
                ckpt.set_rng_state(self.state["rng"][context.rank])
            else:
                log.warning("The checkpoint was written by %d ranks, this run has %d: random streams restart.",
                            len(self.state["rng"]), context.world_size)
                torch.manual_seed(config.seed + 1000 * context.rank + self.step)
            if context.main:
                log.info("Resuming %s at step %d.", self.run_dir, self.step)
        return network

    # -- records

    def record(self, values: dict):
        if self.metrics_file is not None:
            self.metrics_file.write(json.dumps(values) + "\n")
            self.metrics_file.flush()
        if self.writer is not None:
            for key, value in values.items():
                if key not in ("step", "stage") and isinstance(value, (int, float)):
                    self.writer.add_scalar(key, value, values["step"])

    def save(self, name: str, stage: int, optimizer, scheduler):
        states = gather_rng(self.context)
        if not self.context.main:
            return
        payload = {"kind": self.recipe.kind, "model": self.network.state_dict(), "optimizer": optimizer.state_dict(),
                   "scheduler": scheduler.state_dict(), "scaler": self.scaler.state_dict() if self.scaler else {},
                   "step": self.step, "stage": stage, "rng": states, "config": self.config.to_dict(),
                   "split": self.recipe.split, "best": self.best, "validation": self.validations,
                   "elapsed_seconds": self.elapsed + (time.perf_counter() - self.started),
                   "hardware": hardware(self.context), "world_size": self.context.world_size,
                   "versions": {"torch": str(torch.__version__)}, **self.recipe.checkpoint_extras()}
        ckpt.save(payload, self.checkpoints / name)

    # -- the run

    def run(self) -> dict:
        config, context, recipe = self.config, self.context, self.recipe
        self.configure_torch()
        if context.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_json(config.to_dict(), self.run_dir / "config.json")
        recipe.prepare(context, self.run_dir)
        if self.state is not None and self.state.get("split") and self.state["split"]["train"] != recipe.split["train"]:
            raise RuntimeError(f"{self.run_dir / 'split.json'} differs from the split of the checkpoint; restore it "
                               "to resume.")
        self.channels_last = config.channels_last
        self.network = network = self.build()
        amp_dtype = autocast_dtype(config, context.device)
        self.scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
        stages = recipe.stages(network)
        total = sum(stage.steps for stage in stages)

        self.writer = summary_writer(self.run_dir / "tensorboard") if context.main else None
        self.metrics_file = ckpt.metrics_log(self.run_dir, self.step) if context.main else None
        bar = tqdm(total=total, initial=self.step, desc=f"Training {config.network}", unit="step",
                   disable=not (self.progress and context.main), dynamic_ncols=True)
        network.train()
        self.started = time.perf_counter()  # training time, without the data preparation
        try:
            start = 0
            for index, stage in enumerate(stages):
                stop = start + stage.steps
                if self.step < stop:
                    self.run_stage(index, stage, start, stop, amp_dtype, bar, len(stages) > 1)
                start = stop
            if self.state is None and total == 0:
                optimizer = recipe.configure_optimizer(list(network.parameters()))
                self.save(ckpt.LAST, 0, optimizer, lr_scheduler(optimizer, config, 1))
        finally:
            bar.close()
            if self.metrics_file is not None:
                self.metrics_file.close()
            if self.writer is not None:
                self.writer.close()
        best = self.checkpoints / ckpt.BEST
        return {"step": self.step, "last": self.checkpoints / ckpt.LAST, "best": best if best.is_file() else None,
                "best_metric": self.best, "losses": self.losses, "validation": self.validations, "kept": self.kept,
                "recipe": recipe}

    def run_stage(self, index: int, stage: Stage, start: int, stop: int, amp_dtype, bar, named: bool):
        config, context, recipe, network = self.config, self.context, self.recipe, self.network
        parameters = list(stage.parameters if stage.parameters is not None else network.parameters())
        optimizer = recipe.configure_optimizer(parameters)
        scheduler = lr_scheduler(optimizer, config, stage.steps)
        if self.state is not None and self.state.get("stage", 0) == index and self.step > start:
            optimizer.load_state_dict(self.state["optimizer"])
            restore_scheduler(scheduler, self.state["scheduler"])
            if self.scaler is not None and self.state.get("scaler"):
                self.scaler.load_state_dict(self.state["scaler"])
        model = recipe.wrap(network, index)
        if context.distributed:
            model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[context.device] if context.device.type == "cuda" else None,
                find_unused_parameters=stage.find_unused_parameters)
        if named:
            bar.set_description(f"Training {config.network}, {stage.name}")
        autocast = torch.autocast(context.device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()
        window, skipped = [], 0
        for batch in recipe.batches(index, self.step - start, stop - start, context):
            step_start = time.perf_counter()
            batch = to_device(batch, context.device, self.channels_last)
            with autocast:
                loss, parts = recipe.loss(model, batch, index, self.step - start)
            norm = optimizer_step(loss, parts["total"], optimizer, parameters, config.grad_clip, self.scaler)
            skipped = skipped + 1 if norm is None else 0
            if skipped:
                log.warning("Step %d: the gradients are not finite; the step was skipped.", self.step + 1)
            if skipped >= MAX_SKIPPED_STEPS:
                raise FloatingPointError(f"{skipped} steps in a row had non-finite gradients; lower the learning rate "
                                         "(--lr), or train with --amp none.")
            if norm is None:
                parts["skipped"] = 1.0
            else:
                parts["grad_norm"] = norm
            scheduler.step()
            self.step += 1
            self.losses.append(parts["total"])
            window.append({**parts, "seconds": time.perf_counter() - step_start})
            bar.update()
            bar.set_postfix(loss=f"{parts['total']:.4f}")
            if self.step % config.log_every == 0 or self.step == stop:
                averaged = {k: float(np.mean([w[k] for w in window if k in w])) for k in window[-1]}
                self.record({"step": self.step, "stage": index, "lr": optimizer.param_groups[0]["lr"],
                             **{f"train/{k}": v for k, v in averaged.items()}})
                window = []
            if config.validate_every and (self.step % config.validate_every == 0 or self.step == stop):
                self.validate(index, stage, optimizer, scheduler, bar)
            if self.step % config.checkpoint_every == 0 or self.step == stop:
                self.save(ckpt.LAST, index, optimizer, scheduler)
            if stage.keep and self.step == stop:
                self.save(f"{stage.name}.pt", index, optimizer, scheduler)
                self.kept[stage.name] = self.checkpoints / f"{stage.name}.pt"
            if self.callback is not None:
                self.callback(self.step, network, parts)

    def validate(self, index: int, stage: Stage, optimizer, scheduler, bar):
        result = self.recipe.validate(self.network, index, self.context)
        self.network.train()
        if result is None:
            return
        message = result.pop("message", None)
        self.validations.append({"step": self.step, "stage": index, **result})
        self.record({"step": self.step, "stage": index,
                     **{f"val/{k}": v for k, v in result.items() if isinstance(v, (int, float))}})
        if message and self.context.main:
            bar.write(f"step {self.step} ({stage.name}): {message}")
        score = result.get("score")
        if score is not None and (self.best["metric"] is None or score > self.best["metric"]):
            self.best = {"metric": score, "step": self.step, **{k: v for k, v in result.items() if k != "score"}}
            self.save(ckpt.BEST, index, optimizer, scheduler)

"""Glioma grading (HGG vs LGG) with the cross-modality guided grader `cmg` (arXiv 2401.09029): grade labels, the
grade-stratified split, the network inputs, the two-stage recipe and its training loop.

The recipe (`python -m Training train-grader`, both stages in one run):

* Stage 1, `stage1_steps`: the T1ce (primary) branch alone. Only the primary stream, its dual attention and the
  primary head run (`primary_logits`) and only their parameters are in the optimizer; class-weighted
  cross-entropy on the primary logits. The secondary streams are never computed, so their weights and
  BatchNorm statistics stay as initialised.
* Stage 2, `stage2_steps`: the whole guided multi-modal network, continuing from the stage-1 weights with a fresh
  AdamW over every parameter; cumulative learning moves the loss from the primary head to the fused head:
  loss = alpha * CE(primary) + (1 - alpha) * CE(fused), alpha = 1 - (t / T)^2, t = 0 .. T-1 the stage-2 steps
  already done, T = stage2_steps. The first stage-2 step trains the primary head only (alpha 1), the middle one
  weighs it 3/4, the last one (2T - 1) / T^2 (about 2 / T).
* Both stages: cross-entropy weighted by class, w_c = N / (K * n_c) (inverse class frequency of the training
  split, normalised so that the weighted count of the training split is N, i.e. balanced classes); AdamW, the
  learning-rate schedule restarted per stage (cosine by default), gradient clipping.

Inputs are exactly what `pipeline.Pipeline.grade` gives the network: `preprocessing.prepare(case, spacing)`
(prepared once into Training.data's cache) resized to the patch size by `inference.resize_for_classifier`, the
function `inference.classify` uses. Augmentation: a flip of each axis with probability 0.5 and a per-channel
intensity scale (1 +- 0.1) and shift (+- 0.1) on brain voxels (the background stays 0, as at inference). Every
random choice of a sample is a function of (seed, stage, sample index), and the checkpoint holds the RNG state
of dropout, so a resumed run continues exactly.

Grades come from the `grade` column (HGG / LGG) of `<data-dir>/cases.csv` (or --labels-table); cases without a
grade are left out with a log line. The split is seeded and stratified by grade: round(n * val_fraction) cases
of each grade, at least one and never all when a grade has two or more cases.
"""

import csv
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from BrainTumorFusionLib.errors import InputError
from BrainTumorFusionLib.inference import choose_device, resize_for_classifier
from BrainTumorFusionLib.pipeline import GRADES

from . import checkpoint as ckpt
from .config import RecordedConfig
from .data import GROUPS_FILE, cache_path, discover, load_cached, prepare_cache, write_json
from .models import build_network, resolve_config

log = logging.getLogger(__name__)

GRADE_COLUMN = "grade"
STAGE1 = "stage1.pt"  # the weights stage 2 starts from, kept for the record
# Fields that may change when a run is resumed (where and how it runs); the others define the run.
RUNTIME_FIELDS = {"data_dir", "cache_dir", "checkpoint_every", "validate_every", "threads", "device", "log_every"}


@dataclass
class GradingConfig(RecordedConfig):
    """A grading run, recorded in run/config.json and in every checkpoint."""

    network: str = "cmg"
    network_config: Optional[dict] = None  # None = the compact preset (Training.models.COMPACT["cmg"])
    data_dir: str = ""
    cache_dir: str = ""
    run_dir: str = "runs/cmg"
    labels_table: Optional[str] = None  # CSV with case_id and grade; default <data_dir>/cases.csv
    split_file: Optional[str] = None  # an existing split to use; default <run_dir>/split.json (made if absent)
    val_fraction: float = 0.2
    spacing: Optional[list] = field(default_factory=lambda: [2.0, 2.0, 2.0])  # mm (I, J, K); None = native
    patch_size: list = field(default_factory=lambda: [64, 64, 64])  # network input (D, H, W): the resized crop
    batch_size: int = 2
    stage1_steps: int = 700
    stage2_steps: int = 800
    lr: float = 3e-4
    weight_decay: float = 1e-4
    schedule: str = "cosine"  # per stage: cosine | poly | constant (Training.train.lr_factor)
    grad_clip: float = 1.0  # max gradient norm; 0 = no clipping
    intensity_scale: float = 0.1
    intensity_shift: float = 0.1
    checkpoint_every: int = 50
    validate_every: int = 100  # steps; validation also runs at the end of each stage; 0 = only there
    seed: int = 0
    threads: int = 0  # torch CPU threads; 0 = torch's default
    device: str = "auto"
    log_every: int = 10

    @property
    def total_steps(self):
        return self.stage1_steps + self.stage2_steps


def check_config(config):
    if config.network != "cmg":
        raise InputError(f"train-grader trains the cross-modality guided grader 'cmg', not '{config.network}'.")
    if config.stage1_steps < 0 or config.stage2_steps < 0 or config.total_steps == 0:
        raise InputError("Give a positive --stage1-steps and/or --stage2-steps (steps of each training stage).")
    if config.batch_size < 1:
        raise InputError("--batch-size must be at least 1.")
    if not config.data_dir or not config.cache_dir:
        raise InputError("train-grader needs --data-dir and --cache-dir (or --resume with a run that has them).")


# ---------------------------------------------------------------------------------------------- labels, split


def read_grades(table):
    """{case id: "HGG" | "LGG"} from a CSV with `case_id` and `grade` columns. Rows with an empty grade are left
    out with a log line; any other value is an error."""
    table = Path(table)
    if not table.is_file():
        raise InputError(f"Grade table {table} not found. Give a CSV with case_id and grade (HGG/LGG) columns "
                         "(--labels-table), or put it in the data folder as cases.csv.")
    with open(table, newline="") as stream:
        reader = csv.DictReader(stream)
        if "case_id" not in (reader.fieldnames or []) or GRADE_COLUMN not in (reader.fieldnames or []):
            raise InputError(f"{table} needs a `case_id` and a `{GRADE_COLUMN}` column (HGG or LGG).")
        grades = {}
        for row in reader:
            grade = (row[GRADE_COLUMN] or "").strip().upper()
            if not grade:
                log.info("Case %s has no grade in %s: left out of grading.", row["case_id"], table.name)
                continue
            if grade not in GRADES:
                raise InputError(f"{table}: case {row['case_id']} has grade '{row[GRADE_COLUMN]}'; "
                                 f"use one of {', '.join(GRADES)} or leave it empty to leave the case out.")
            grades[row["case_id"]] = grade
    return grades


def make_grading_split(grades, val_fraction=0.2, seed=0):
    """Seeded train/validation split stratified by grade: of each grade, round(n * val_fraction) cases chosen at
    random go to validation, at least one and never all of them when the grade has two or more cases (so with
    two LGG cases one is in each part). Depends only on the ids, their grades and the seed."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction}")
    rng = np.random.default_rng(seed)
    validation = []
    for grade in GRADES:
        members = sorted(c for c, g in grades.items() if g == grade)
        count = min(max(int(round(len(members) * val_fraction)), 1), len(members) - 1) if len(members) > 1 else 0
        validation += [members[i] for i in rng.permutation(len(members))[:count]]
    return {
        "seed": int(seed),
        "val_fraction": float(val_fraction),
        "stratified_by": "grade",
        "train": sorted(c for c in grades if c not in set(validation)),
        "validation": sorted(validation),
        "grades": {c: grades[c] for c in sorted(grades)},
    }


def load_or_make_grading_split(path, grades, val_fraction=0.2, seed=0):
    """The split recorded at `path` if it exists, else a new one written there. A recorded split naming cases
    without a grade (or not in the data) is an error; its `grades` are those of the table."""
    path = Path(path)
    if not path.is_file():
        split = make_grading_split(grades, val_fraction, seed)
        write_json(split, path)
        return split
    split = json.loads(path.read_text())
    named = split.get("train", []) + split.get("validation", [])
    unknown = sorted(c for c in named if c not in grades)
    if unknown or not split.get("train"):
        raise InputError(f"Split {path} names cases that have no grade or are not in the data folder "
                         f"({', '.join(unknown[:5]) or 'no training case'}). Fix the split file or the data.")
    split["grades"] = {c: grades[c] for c in sorted(named)}
    return split


def class_weights(grades):
    """Cross-entropy weights in GRADES order from the grades of the training cases: w_c = N / (K * n_c)."""
    counts = np.array([sum(g == grade for g in grades) for grade in GRADES], dtype=float)
    if (counts == 0).any():
        missing = [grade for grade, n in zip(GRADES, counts) if n == 0]
        raise InputError(f"The training split has no {' or '.join(missing)} case; a grader needs both grades. "
                         "Add cases or use another split (--split-file / --val-fraction).")
    return (counts.sum() / (len(GRADES) * counts)).tolist()


# ---------------------------------------------------------------------------------------------- inputs


def load_inputs(case_ids, paths, size):
    """{case id: (4, *size) float32 tensor}: each prepared case of the cache resized as inference.classify does."""
    inputs = {}
    for case_id in case_ids:
        case = load_cached(paths[case_id])
        if not case["present"].all():
            raise InputError(f"Case {case_id} lacks a modality; the grader needs all four (T1, T1ce, T2, FLAIR).")
        inputs[case_id] = resize_for_classifier(case["image"], size)[0]
    return inputs


def augment(image, rng, scale=0.1, shift=0.1):
    """Random flips of each axis (p 0.5) and a per-channel intensity scale and shift on brain voxels."""
    flips = [axis for axis in (1, 2, 3) if rng.random() < 0.5]
    image = image.flip(flips) if flips else image.clone()
    brain = (image != 0).any(dim=0, keepdim=True)
    channels = image.shape[0]
    factors = torch.tensor(1.0 + rng.uniform(-scale, scale, channels), dtype=image.dtype).view(-1, 1, 1, 1)
    offsets = torch.tensor(rng.uniform(-shift, shift, channels), dtype=image.dtype).view(-1, 1, 1, 1)
    return torch.where(brain, image * factors + offsets, torch.zeros_like(image))


def sample_case(case_ids, index, seed, stage):
    """The case of global sample `index` of a stage: a seeded permutation of the training cases per pass."""
    epoch, position = divmod(int(index), len(case_ids))
    return case_ids[np.random.default_rng([seed, stage, 0, epoch]).permutation(len(case_ids))[position]]


def training_batch(inputs, grades, case_ids, stage_step, config, stage):
    """(x (B, 4, D, H, W), y (B,) grade indices) of a stage's step: samples stage_step * B .. + B - 1."""
    images, labels = [], []
    for index in range(stage_step * config.batch_size, (stage_step + 1) * config.batch_size):
        case_id = sample_case(case_ids, index, config.seed, stage)
        rng = np.random.default_rng([config.seed, stage, 1, index])
        images.append(augment(inputs[case_id], rng, config.intensity_scale, config.intensity_shift))
        labels.append(GRADES.index(grades[case_id]))
    return torch.stack(images), torch.tensor(labels, dtype=torch.long)


# ---------------------------------------------------------------------------------------------- network, loss


def primary_logits(network, x):
    """Grade logits of the T1ce branch alone (primary stream, its dual attention, primary head) without running
    the secondary streams: what the network returns as CMGAux.primary_logits in training mode."""
    p = network.primary
    stream = network.streams[p]
    y = stream.stem(x[:, p:p + 1])
    for stage in stream.stages:
        y = stage(y)
    return network.primary_head(network._pooled(p, y))


def primary_parameters(network):
    """The parameters stage 1 trains: primary stream, its dual attention and the primary head."""
    p = network.primary
    modules = (network.streams[p], network.attention[p], network.primary_head)
    return [parameter for module in modules for parameter in module.parameters()]


def cumulative_alpha(t, total):
    """Weight of the primary head's loss at stage-2 step t (0 .. total-1): 1 - (t / total)^2."""
    return 1.0 - (t / total) ** 2


def stage_loss(network, x, y, weights, stage, alpha=1.0):
    """(loss, parts) of a batch: stage 1 CE(primary); stage 2 alpha CE(primary) + (1 - alpha) CE(fused)."""
    if stage == 1:
        loss = F.cross_entropy(primary_logits(network, x), y, weight=weights)
        return loss, {"total": loss.item(), "ce_primary": loss.item()}
    fused, aux = network(x)
    ce_primary = F.cross_entropy(aux.primary_logits, y, weight=weights)
    ce_fused = F.cross_entropy(fused, y, weight=weights)
    loss = alpha * ce_primary + (1.0 - alpha) * ce_fused
    return loss, {"total": loss.item(), "ce_primary": ce_primary.item(), "ce_fused": ce_fused.item(),
                  "alpha": alpha}


# ---------------------------------------------------------------------------------------------- metrics


def roc_auc(positive_scores, negative_scores):
    """Area under the ROC curve: the probability that a positive scores above a negative (ties count 1/2)."""
    pairs = [(p > n) + 0.5 * (p == n) for p in positive_scores for n in negative_scores]
    return float(np.mean(pairs)) if pairs else None


def grading_metrics(true_grades, probabilities):
    """Accuracy, balanced accuracy (mean recall of the grades present), AUC of p(LGG) for LGG against HGG (None
    unless both grades are present), case counts. probabilities: (p_HGG, p_LGG) per case."""
    predicted = [GRADES[int(np.argmax(p))] for p in probabilities]
    recalls = {}
    for grade in GRADES:
        members = [i for i, g in enumerate(true_grades) if g == grade]
        if members:
            recalls[grade] = sum(predicted[i] == grade for i in members) / len(members)
    lgg = GRADES.index("LGG")
    scores = {grade: [p[lgg] for p, g in zip(probabilities, true_grades) if g == grade] for grade in GRADES}
    correct = sum(p == g for p, g in zip(predicted, true_grades))
    return {
        "cases": len(true_grades),
        "counts": {grade: sum(g == grade for g in true_grades) for grade in GRADES},
        "accuracy": correct / len(true_grades) if true_grades else None,
        "balanced_accuracy": float(np.mean(list(recalls.values()))) if recalls else None,
        "recall": recalls,
        "auc": roc_auc(scores["LGG"], scores["HGG"]) if all(scores.values()) else None,
    }


def validate(network, inputs, grades, case_ids, device, stage):
    """Grading metrics plus unweighted mean CE over case_ids, without augmentation; stage 1 scores the primary
    head, stage 2 the fused head (what inference returns)."""
    network.eval()
    probabilities, losses = [], []
    with torch.no_grad():
        for case_id in case_ids:
            x = inputs[case_id][None].to(device)
            logits = primary_logits(network, x) if stage == 1 else network(x)
            target = torch.tensor([GRADES.index(grades[case_id])], device=device)
            losses.append(float(F.cross_entropy(logits, target)))
            probabilities.append(torch.softmax(logits.float(), dim=1)[0].cpu().numpy())
    network.train()
    metrics = grading_metrics([grades[c] for c in case_ids], probabilities)
    metrics["loss"] = float(np.mean(losses))
    return metrics


# ---------------------------------------------------------------------------------------------- the run


def resumed_config(config, state):
    """The checkpoint's configuration with this call's runtime fields (warning about other changes)."""
    stored = GradingConfig.from_dict(state["config"])
    changed = [f for f, v in config.to_dict().items()
               if f not in RUNTIME_FIELDS and f != "network_config" and v != getattr(stored, f)]
    if changed:
        log.warning("Resuming with the checkpoint's settings; ignoring changed %s.", ", ".join(changed))
    return GradingConfig.from_dict({**stored.to_dict(), **{f: getattr(config, f) for f in RUNTIME_FIELDS}})


def prepare_grading_data(config, run_dir):
    """(split, grades of the split's cases, inputs): grades from the table, the split (recorded in
    run_dir/split.json), the cases prepared into the cache and resized to the network input."""
    cases = discover(config.data_dir)
    table = Path(config.labels_table) if config.labels_table else Path(config.data_dir) / GROUPS_FILE
    table_grades = read_grades(table)
    for case_id in sorted(set(cases) - set(table_grades)):
        log.info("Case %s has no grade: left out of grading.", case_id)
    grades = {c: table_grades[c] for c in cases if c in table_grades}
    if not grades:
        raise InputError(f"No case of {config.data_dir} has a grade in {table}.")
    split_path = run_dir / "split.json"
    split = load_or_make_grading_split(Path(config.split_file) if config.split_file else split_path, grades,
                                       config.val_fraction, config.seed)
    split["excluded"] = {c: "no grade" for c in sorted(set(cases) - set(grades))}
    write_json(split, split_path)
    needed = split["train"] + split["validation"]
    prepare_cache({c: cases[c] for c in needed}, config.cache_dir, config.spacing, progress=True)
    paths = {c: cache_path(config.cache_dir, config.spacing, c) for c in needed}
    return split, split["grades"], load_inputs(needed, paths, config.patch_size)


def stage_schedule(config, stage):
    """LambdaLR factor of a stage: Training.train's schedules over the stage's own steps, no warm-up."""
    from .train import lr_factor

    steps = config.stage1_steps if stage == 1 else config.stage2_steps
    return lr_factor(SimpleNamespace(steps=steps, warmup_steps=0, schedule=config.schedule, poly_power=0.9))


def hardware_of(device):
    from .train import hardware

    return hardware(SimpleNamespace(device=device, world_size=1))


def train_grader(config, resume=False, progress=True, callback=None):
    """Train (or continue) a grading run: stage 1 then stage 2. Returns {"step", "last", "stage1", "losses",
    "validation", "class_weights"}; `losses` are the total losses of the steps run in this call.

    callback(step, network, parts), if given, runs after each step (after its checkpoint); an exception it raises
    stops the run there, as a kill would.
    """
    from tqdm import tqdm

    if isinstance(config, dict):
        config = GradingConfig.from_dict(config)
    if config.threads:
        torch.set_num_threads(config.threads)
    run_dir, state = Path(config.run_dir), None
    checkpoints = run_dir / "checkpoints"
    if resume and (checkpoints / ckpt.LAST).is_file():
        state = ckpt.load(checkpoints / ckpt.LAST)
        config = resumed_config(config, state)
    elif resume:
        log.warning("No checkpoint in %s: starting from step 0.", checkpoints)
    check_config(config)
    device = choose_device(config.device)
    config.network_config = resolve_config(config.network, config.network_config)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(config.to_dict(), run_dir / "config.json")
    split, grades, inputs = prepare_grading_data(config, run_dir)
    if state is not None and state["split"]["train"] != split["train"]:
        raise InputError(f"{run_dir / 'split.json'} differs from the split of the checkpoint; restore it to resume.")
    weights_list = class_weights([grades[c] for c in split["train"]])
    weights = torch.tensor(weights_list, device=device)
    log.info("Class weights %s; %d training cases, %d validation cases.",
             {g: round(w, 4) for g, w in zip(GRADES, weights_list)}, len(split["train"]), len(split["validation"]))

    torch.manual_seed(config.seed)
    network = build_network(config.network, config.network_config).to(device)
    torch.manual_seed(config.seed + 1)  # dropout stream
    step, elapsed, validations = 0, 0.0, []
    if state is not None:
        network.load_state_dict(state["model"])
        step, elapsed = int(state["step"]), float(state["elapsed_seconds"])
        ckpt.set_rng_state(state["rng"])
        validations = list(state.get("validation", []))
        log.info("Resuming %s at step %d.", run_dir, step)
    metrics_file = ckpt.metrics_log(run_dir, step)
    started = time.perf_counter()
    stages = {1: (0, config.stage1_steps), 2: (config.stage1_steps, config.total_steps)}
    training_ids = sorted(split["train"])
    losses = []

    def save(name, stage, optimizer, scheduler):
        payload = {"model": network.state_dict(), "optimizer": optimizer.state_dict(),
                   "scheduler": scheduler.state_dict(), "stage": stage, "step": step, "rng": ckpt.rng_state(),
                   "config": config.to_dict(), "split": split, "class_weights": dict(zip(GRADES, weights_list)),
                   "validation": validations, "elapsed_seconds": elapsed + time.perf_counter() - started,
                   "hardware": hardware_of(device), "task": "grading",
                   "versions": {"torch": str(torch.__version__)}}
        ckpt.save(payload, checkpoints / name)

    def record(values):
        metrics_file.write(json.dumps(values) + "\n")
        metrics_file.flush()

    bar = tqdm(total=config.total_steps, initial=step, desc="Grading", unit="step", disable=not progress,
               dynamic_ncols=True)
    network.train()
    try:
        for stage, (start, stop) in stages.items():
            if step >= stop:
                continue
            parameters = primary_parameters(network) if stage == 1 else list(network.parameters())
            optimizer = torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, stage_schedule(config, stage))
            if state is not None and state.get("stage") == stage and step > start:
                optimizer.load_state_dict(state["optimizer"])
                scheduler.load_state_dict(state["scheduler"])
            bar.set_description(f"Grading, stage {stage}")
            window = []
            while step < stop:
                step_start = time.perf_counter()
                x, y = training_batch(inputs, grades, training_ids, step - start, config, stage)
                alpha = cumulative_alpha(step - start, stop - start) if stage == 2 else 1.0
                loss, parts = stage_loss(network, x.to(device), y.to(device), weights, stage, alpha)
                if not math.isfinite(parts["total"]):
                    raise FloatingPointError(f"The loss is {parts['total']}; lower the learning rate (--lr).")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if config.grad_clip > 0:
                    parts["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(parameters, config.grad_clip))
                optimizer.step()
                scheduler.step()
                step += 1
                losses.append(parts["total"])
                window.append({**parts, "seconds": time.perf_counter() - step_start})
                bar.update()
                bar.set_postfix(loss=f"{parts['total']:.4f}")
                if step % config.log_every == 0 or step == stop:
                    means = {k: float(np.mean([w[k] for w in window if k in w])) for k in window[-1]}
                    record({"step": step, "stage": stage, "lr": optimizer.param_groups[0]["lr"],
                            **{f"train/{k}": v for k, v in means.items()}})
                    window = []
                if split["validation"] and (step == stop or (config.validate_every
                                                             and step % config.validate_every == 0)):
                    result = validate(network, inputs, grades, split["validation"], device, stage)
                    validations.append({"step": step, "stage": stage, **result})
                    record({"step": step, "stage": stage, **{f"val/{k}": result[k] for k in
                                                              ("loss", "accuracy", "balanced_accuracy", "auc")}})
                    bar.write(f"step {step} (stage {stage}): validation accuracy {result['accuracy']:.3f}, balanced "
                              f"{result['balanced_accuracy']:.3f}, loss {result['loss']:.4f}")
                if step % config.checkpoint_every == 0 or step == stop:
                    save(ckpt.LAST, stage, optimizer, scheduler)
                if stage == 1 and step == stop:
                    save(STAGE1, stage, optimizer, scheduler)
                if callback is not None:
                    callback(step, network, parts)
    finally:
        bar.close()
        metrics_file.close()
    return {"step": step, "last": checkpoints / ckpt.LAST,
            "stage1": checkpoints / STAGE1 if (checkpoints / STAGE1).is_file() else None, "losses": losses,
            "validation": validations, "class_weights": dict(zip(GRADES, weights_list))}

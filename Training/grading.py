"""Glioma grading (HGG vs LGG) with the cross-modality guided grader `cmg` (arXiv 2401.09029): grade labels, the
grade-stratified split, the network inputs and the two-stage recipe that runs in the shared loop (Training.loop).

The recipe (`python -m Training train-grader`, both stages in one run):

* Stage 1, `stage1_steps`: the T1ce (primary) branch alone. Only the primary stream, its dual attention and the
  primary head run (the network's `primary_logits`) and only their parameters are in the optimizer; class-weighted
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
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from monai.metrics import compute_roc_auc

from BrainTumorFusionLib.engine.inference import resize_for_classifier
from BrainTumorFusionLib.engine.pipeline import GRADES
from BrainTumorFusionLib.errors import InputError

from . import distributed
from .config import RunConfig, option
from .data import GROUPS_FILE, cache_path, discover, load_cached, prepare_cache, write_json
from .loop import MethodAsForward, Recipe, Stage, run

log = logging.getLogger(__name__)

GRADE_COLUMN = "grade"


@dataclass
class GradingConfig(RunConfig):
    """A grading run, recorded in run/config.json and in every checkpoint."""

    network: str = option("cmg")
    run_dir: str = option("runs/cmg")
    labels_table: Optional[str] = option(None, 'CSV with case_id and grade; default <data_dir>/cases.csv')
    split_file: Optional[str] = option(None, 'an existing split to use; default <run_dir>/split.json (made if absent)')
    val_fraction: float = option(0.2, "share of each grade's cases that validate (at least one, never all)")
    stage1_steps: int = option(700, 'steps of stage 1, the T1ce branch alone')
    stage2_steps: int = option(800, 'steps of stage 2, the whole network')
    weight_decay: float = option(1e-4)
    schedule: str = option("cosine", 'per stage: cosine | poly | constant')
    intensity_scale: float = option(0.1, 'augmentation: per-channel intensity scale (+-)')
    intensity_shift: float = option(0.1, 'augmentation: per-channel intensity shift (+-)')
    checkpoint_every: int = option(50)
    validate_every: int = option(100, 'steps; validation also runs at the end of each stage; 0 = never')

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


def cumulative_alpha(t, total):
    """Weight of the primary head's loss at stage-2 step t (0 .. total-1): 1 - (t / total)^2."""
    return 1.0 - (t / total) ** 2


def stage_loss(model, x, y, weights, stage, alpha=1.0):
    """(loss, parts) of a batch: stage 1 (index 0) CE(primary), `model` the primary branch; stage 2
    alpha CE(primary) + (1 - alpha) CE(fused), `model` the whole network in training mode."""
    if stage == 0:
        loss = F.cross_entropy(model(x), y, weight=weights)
        return loss, {"total": loss.item(), "ce_primary": loss.item()}
    fused, aux = model(x)
    ce_primary = F.cross_entropy(aux.primary_logits, y, weight=weights)
    ce_fused = F.cross_entropy(fused, y, weight=weights)
    loss = alpha * ce_primary + (1.0 - alpha) * ce_fused
    return loss, {"total": loss.item(), "ce_primary": ce_primary.item(), "ce_fused": ce_fused.item(),
                  "alpha": alpha}


# ---------------------------------------------------------------------------------------------- metrics


def lgg_auc(lgg_scores, hgg_scores):
    """Area under the ROC curve of p(LGG) for LGG (positive) against HGG cases (MONAI's compute_roc_auc)."""
    scores = torch.tensor(list(lgg_scores) + list(hgg_scores), dtype=torch.float64)
    truth = torch.tensor([1] * len(lgg_scores) + [0] * len(hgg_scores))
    return float(compute_roc_auc(scores, truth))


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
        "auc": lgg_auc(scores["LGG"], scores["HGG"]) if all(scores.values()) else None,
    }


def validate(network, inputs, grades, case_ids, device, stage):
    """Grading metrics plus unweighted mean CE over case_ids, without augmentation; stage 1 (index 0) scores the
    primary head, stage 2 the fused head (what inference returns)."""
    network.eval()
    probabilities, losses = [], []
    with torch.no_grad():
        for case_id in case_ids:
            x = inputs[case_id][None].to(device)
            logits = network.primary_logits(x) if stage == 0 else network(x)
            target = torch.tensor([GRADES.index(grades[case_id])], device=device)
            losses.append(float(F.cross_entropy(logits, target)))
            probabilities.append(torch.softmax(logits.float(), dim=1)[0].cpu().numpy())
    metrics = grading_metrics([grades[c] for c in case_ids], probabilities)
    metrics["loss"] = float(np.mean(losses))
    return metrics


# ---------------------------------------------------------------------------------------------- the recipe


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


class GradingRecipe(Recipe):
    kind = "grading"

    def __init__(self, config: GradingConfig):
        super().__init__(config)
        check_config(config)

    def prepare(self, context, run_dir):
        """Grades, split and inputs on every rank (each reads the small resized inputs itself)."""
        if context.main:
            self.split, self.grades, self.inputs = prepare_grading_data(self.config, run_dir)
        distributed.barrier(context)
        if not context.main:
            self.split, self.grades, self.inputs = prepare_grading_data(self.config, run_dir)
        self.class_weights = class_weights([self.grades[c] for c in self.split["train"]])
        self.weights = torch.tensor(self.class_weights, device=context.device)
        self.training_ids = sorted(self.split["train"])
        log.info("Class weights %s; %d training cases, %d validation cases.",
                 {g: round(w, 4) for g, w in zip(GRADES, self.class_weights)}, len(self.split["train"]),
                 len(self.split["validation"]))

    def catalogue_entry(self, state):
        config, split = self.config, state["split"]
        train_counts = {g: sum(split["grades"][c] == g for c in split["train"]) for g in GRADES}
        return {
            "title": f"{config.network} glioma grader ({Path(config.run_dir).name})",
            "classes": list(GRADES),
            "handles_missing_modalities": False,
            "split": {"given_as": config.split_file, "stratified_by": "grade",
                      "grades": {c: split["grades"][c] for c in split["train"] + split["validation"]}},
            "training": {
                "steps": {"stage1": config.stage1_steps, "stage2": config.stage2_steps, "done": int(state["step"])},
                "data": f"{len(split['train'])} training cases (BraTS; "
                        + ", ".join(f"{n} {g}" for g, n in train_counts.items()) + ")",
                "input": "brain crop (library preprocessing) resized to patch_size (inference.resize_for_classifier)",
                "batch_size": config.batch_size,
                "optimizer": f"AdamW lr {config.lr} wd {config.weight_decay}, {config.schedule} schedule per stage",
                "loss": "stage 1: class-weighted CE on the T1ce primary head (primary stream only); stage 2 from the "
                        "stage-1 weights: alpha CE(primary) + (1 - alpha) CE(fused), alpha = 1 - (t/T)^2",
                "class_weights": state.get("class_weights"),
                "augmentation": f"flips, intensity scale {config.intensity_scale} / shift {config.intensity_shift}",
            },
        }

    def stages(self, network):
        return [Stage("stage1", self.config.stage1_steps, parameters=network.primary_parameters(),
                      find_unused_parameters=True, keep=True),
                Stage("stage2", self.config.stage2_steps)]

    def wrap(self, network, stage):
        return MethodAsForward(network, "primary_logits") if stage == 0 else network

    def batches(self, stage, start, stop, context):
        for stage_step in range(start, stop):
            x, y = training_batch(self.inputs, self.grades, self.training_ids, stage_step * context.world_size
                                  + context.rank, self.config, stage + 1)
            yield {"x": x, "y": y}

    def loss(self, model, batch, stage, stage_step):
        alpha = cumulative_alpha(stage_step, self.config.stage2_steps) if stage == 1 else 1.0
        return stage_loss(model, batch["x"], batch["y"], self.weights, stage, alpha)

    def validate(self, network, stage, context):
        if not self.split["validation"]:
            return None
        result = validate(network, self.inputs, self.grades, self.split["validation"], context.device, stage)
        result["message"] = (f"validation accuracy {result['accuracy']:.3f}, balanced "
                             f"{result['balanced_accuracy']:.3f}, loss {result['loss']:.4f}")
        return result

    def checkpoint_extras(self):
        return {"class_weights": dict(zip(GRADES, self.class_weights))}


def train_grader(config, resume=False, progress=True, callback=None):
    """Train (or continue) a grading run: stage 1 then stage 2 (see Training.loop.run for the result and the
    callback); the result adds "stage1" (the kept stage-1 weights) and "class_weights"."""
    config = GradingConfig.from_dict(config) if isinstance(config, dict) else config
    result = run(GradingRecipe, config, resume, progress, callback)
    stage1 = Path(config.run_dir) / "checkpoints" / "stage1.pt"
    return {**result, "stage1": stage1 if stage1.is_file() else None,
            "class_weights": dict(zip(GRADES, result["recipe"].class_weights))}

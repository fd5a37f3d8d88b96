"""Evaluate and export a grading run (Training/grading.py) with the library's own code.

Evaluation reads each case with `file_io.read_case` and grades it with `pipeline.Pipeline.grade` (preprocessing,
resizing and softmax exactly as in Slicer), then writes per-case probabilities to `<run>/grading_<split>.csv` and
accuracy, balanced accuracy and AUC (when both grades are present) to `<run>/grading_<split>.json`.

Export writes the weights and a `task: grading` catalogue entry through Training.export's helpers (the same
weights file format, catalogue update and load-back check as the segmentation models), with the split, the
training record, the metrics and a note on how far the weights can be trusted.
"""

import json
import logging
import time
from pathlib import Path

from tqdm import tqdm

from BrainTumorFusionLib.engine.catalogue import SHIPPED_CATALOGUE
from BrainTumorFusionLib.engine.pipeline import GRADES, Model, Pipeline
from BrainTumorFusionLib.errors import InputError
from BrainTumorFusionLib.files.cases import find_cases
from BrainTumorFusionLib.files.file_io import read_case
from BrainTumorFusionLib.modalities import MODALITIES

from . import checkpoint as ckpt
from .checkpoint import checkpoint_file
from .data import GROUPS_FILE, write_csv, write_json
from .export import SIZE_LIMIT_MB, write_entry
from .grading import GradingConfig, GradingRecipe, grading_metrics, read_grades
from .network_recipes import build_network

log = logging.getLogger(__name__)

COLUMNS = ("case_id", "grade") + tuple(f"p_{g}" for g in GRADES) + ("predicted", "correct", "seconds")
# Fewer cases than this of a grade and the entry says the weights are not a validated grader.
MIN_CASES_PER_GRADE = 20


def load_grader(path):
    """(network in eval mode on the CPU, GradingConfig, checkpoint dict) of a grading checkpoint or run folder."""
    state = ckpt.load(checkpoint_file(path))
    if state.get("kind") != "grading":
        raise InputError(f"{path} is not a grading checkpoint (train it with `python -m Training train-grader`).")
    config = GradingConfig.from_dict(state["config"])
    network = build_network(config.network, config.network_config)
    network.load_state_dict(state["model"], strict=True)
    if state["step"] < config.total_steps:
        log.warning("%s is from step %d of %d: the run has not finished.", path, state["step"], config.total_steps)
    return network.eval(), config, state


def grader_model(network, config, name=None):
    """The library pipeline's Model for a trained grader (needs all four modalities)."""
    return Model(name=name or config.network, network=network, patch_size=tuple(config.patch_size),
                 spacing_mm=tuple(config.spacing) if config.spacing else None, modalities=MODALITIES,
                 handles_missing_modalities=False)


def cases_to_grade(state, data_dir, split, labels_table=None):
    """{case id: grade} of `split`: validation / train (as recorded in the run), all (every graded case of
    data_dir), or a comma-separated list of ids (graded by the table)."""
    if split in ("validation", "train"):
        return {c: state["split"]["grades"][c] for c in state["split"][split]}
    grades = read_grades(labels_table or Path(data_dir) / GROUPS_FILE)
    wanted = sorted(grades) if split == "all" else [c for c in split.split(",") if c]
    ungraded = [c for c in wanted if c not in grades]
    if ungraded:
        raise InputError(f"No grade for {', '.join(ungraded[:5])} in the grade table; give --labels-table.")
    return {c: grades[c] for c in wanted}


def evaluate_grader(checkpoint, data_dir, split="validation", output_csv=None, device="auto", labels_table=None,
                    progress=True):
    """Grade the cases of `split` with the library pipeline. Returns {"csv", "json", "rows", "metrics"}."""
    path = checkpoint_file(checkpoint)
    network, config, state = load_grader(path)
    pipeline = Pipeline(model=None, device=device, grader=grader_model(network, config))
    wanted = cases_to_grade(state, data_dir, split, labels_table)
    available = {c.case_id: c for c in find_cases(data_dir)}
    missing = [c for c in wanted if c not in available]
    if missing:
        raise InputError(f"Cases of the split not found in {data_dir}: {', '.join(missing[:5])}.")
    name = split if split in ("validation", "train", "all") else "cases"
    output_csv = Path(output_csv) if output_csv else path.parent.parent / f"grading_{name}.csv"
    rows, probabilities = [], []
    for case_id, grade in tqdm(wanted.items(), desc="Grading", unit="case", disable=not progress):
        case, _ = read_case(available[case_id])
        start = time.perf_counter()
        result = pipeline.grade(case)
        predicted = max(GRADES, key=lambda g: result[g])
        rows.append({"case_id": case_id, "grade": grade, **{f"p_{g}": result[g] for g in GRADES},
                     "predicted": predicted, "correct": int(predicted == grade),
                     "seconds": round(time.perf_counter() - start, 2)})
        probabilities.append([result[g] for g in GRADES])
    metrics = grading_metrics(list(wanted.values()), probabilities)
    metrics.update(split=split, checkpoint=str(path), step=int(state["step"]))
    write_csv(rows, COLUMNS, output_csv)
    json_path = output_csv.with_suffix(".json")
    write_json(metrics, json_path)
    return {"csv": output_csv, "json": json_path, "rows": rows, "metrics": metrics}


def default_notes(split):
    """A caveat for entries trained and validated on few cases of a grade (None when every grade has enough)."""
    grades = split["grades"]
    counts = {g: {part: sum(grades[c] == g for c in split[part]) for part in ("train", "validation")}
              for g in GRADES}
    totals = {g: n["train"] + n["validation"] for g, n in counts.items()}
    scarcest = min(GRADES, key=totals.get)
    if totals[scarcest] >= MIN_CASES_PER_GRADE:
        return None
    described = "; ".join(f"{g}: {n['train']} training, {n['validation']} validation" for g, n in counts.items())
    return (f"Trained and validated on very few cases ({described}). Only {totals[scarcest]} {scarcest} cases "
            "exist in the data, so these weights exercise the grading path and are NOT a validated grader: do not "
            "rely on their grades.")


def metrics_entry(path):
    metrics = json.loads(Path(path).read_text())
    return {**{k: (round(metrics[k], 4) if metrics.get(k) is not None else None)
               for k in ("accuracy", "balanced_accuracy", "auc")},
            "cases": metrics["cases"], "counts": metrics["counts"], "evaluation": Path(path).name}


def export_grader(checkpoint, name, catalogue=SHIPPED_CATALOGUE, title=None, metrics_json=None, dtype="auto",
                  size_limit_mb=SIZE_LIMIT_MB, data_description=None, notes=None):
    """Write <name>.pt and its `grading` catalogue entry (loaded back through the library); returns the entry."""
    path = checkpoint_file(checkpoint)
    network, config, state = load_grader(path)
    run_dir = path.parent.parent
    if metrics_json is None and (run_dir / "grading_validation.json").is_file():
        metrics_json = run_dir / "grading_validation.json"
    metrics = metrics_entry(metrics_json) if metrics_json is not None else None
    if metrics is None:
        log.warning("No grading evaluation (run `python -m Training evaluate-grader` first): the entry has no metrics.")
    return write_entry(GradingRecipe(config), state, network, name, catalogue, run_dir, title=title, dtype=dtype,
                       size_limit_mb=size_limit_mb, data_description=data_description, metrics=metrics,
                       notes=notes or default_notes(state["split"]))

"""Evaluate a checkpoint, or a catalogue model (an ensemble too), with the library's own inference (what Slicer
runs) on a split of the data.

Each case is read by `file_io.read_case`, segmented by `pipeline.Pipeline` with a `Model` built from the
checkpoint (preprocessing, sliding window, postprocessing back onto the case grid, exactly as in Slicer), and
compared with its label map on the case grid: Dice and HD95 (mm, the case's voxel spacing) for WT, TC and ET.
The CSV has one row per case and a last row `mean`.
"""

import csv
import json
import logging
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from BrainTumorFusionLib.choices import ENSEMBLE
from BrainTumorFusionLib.engine.catalogue import Catalogue
from BrainTumorFusionLib.engine.pipeline import Ensemble, Model, Pipeline
from BrainTumorFusionLib.files.file_io import CaseFiles, read_case, write_atomically, write_labels
from BrainTumorFusionLib.modalities import MODALITIES
from BrainTumorFusionLib.preparation.geometry import spacing_of

from . import checkpoint as ckpt
from .checkpoint import checkpoint_file
from .config import TrainConfig
from .data import REGIONS, case_folder, discover, labels_file, read_labels_on_case_grid, write_csv
from .metrics import region_metrics
from .network_recipes import build_network, uses_modality_dropout

log = logging.getLogger(__name__)

METRIC_COLUMNS = (tuple(f"dice_{r}" for r in REGIONS) + tuple(f"hd95_{r}" for r in REGIONS)
                  + tuple(f"lesion_dice_{r}" for r in REGIONS))
COLUMNS = ("case_id",) + METRIC_COLUMNS + ("seconds",)
MEAN_ROW = "mean"


def load_trained(path):
    """(network in eval mode on the CPU, TrainConfig, checkpoint dict) of a checkpoint."""
    state = ckpt.load(checkpoint_file(path))
    config = TrainConfig.from_dict(state["config"])
    network = build_network(config.network, config.network_config)
    network.load_state_dict(state["model"], strict=True)
    return network.eval(), config, state


def model_from_checkpoint(path, name=None, window="patch"):
    """A library pipeline Model (network, patch size, spacing, missing-modality support) from a checkpoint; `window`
    "whole" runs one window over the whole brain crop (measure both before exporting one: the shipped BatchNorm
    hafb gained from it, the instance-norm hafb lost TC 0.752 -> 0.661)."""
    network, config, _ = load_trained(path)
    return Model(name=name or config.network, network=network, patch_size=tuple(config.patch_size),
                 spacing_mm=tuple(config.spacing) if config.spacing else None, modalities=MODALITIES,
                 handles_missing_modalities=bool(uses_modality_dropout(config)),
                 whole_window=window == "whole")


def catalogue_segmenter(name, members=None, catalogue=None):
    """(segmenter, recorded split) of catalogue model `name`, or of the ensemble of `members` (whose entries
    must record the same validation cases, else there is no common held-out set to score the ensemble on)."""
    catalogue = catalogue or Catalogue.load()
    if name == ENSEMBLE:
        entries = catalogue.ensemble_members(members)
        segmenter = Ensemble([Model.from_entry(entry, "cpu") for entry in entries])
    else:
        entries = [catalogue.entry(name, "segmentation")]
        segmenter = Model.from_entry(entries[0], "cpu")
    splits = {json.dumps(entry.details.get("split", {}).get("validation")) for entry in entries}
    if len(splits) != 1 or "split" not in entries[0].details:
        raise ValueError(f"The models of '{name}' do not record one common validation split; evaluate them one by "
                         "one or give the cases with --split.")
    return segmenter, entries[0].details["split"]


def split_cases(state, data_dir, split):
    """Case ids of `split`: validation / train (from the checkpoint's recorded split), all (every labelled case
    in data_dir), or a comma-separated list of ids."""
    if split in ("validation", "train"):
        return list(state["split"][split])
    if split == "all":
        return sorted(discover(data_dir))
    return [c for c in split.split(",") if c]


def read_means(path):
    """{column: value} of the `mean` row of an evaluation CSV, plus `cases` (number of case rows)."""
    with open(path, newline="") as stream:
        rows = list(csv.DictReader(stream))
    mean = next((r for r in rows if r["case_id"] == MEAN_ROW), None)
    if mean is None:
        raise ValueError(f"{path} has no `{MEAN_ROW}` row; is it an evaluation CSV of Training.evaluate?")
    out = {k: float(mean[k]) for k in METRIC_COLUMNS if k in mean}  # older CSVs have no lesion-wise columns
    out["cases"] = len(rows) - 1
    return out


def save_probabilities(path, probabilities, crop):
    """Region probabilities (3, ...) on a case's brain crop as uint8 (x/255, compressed) with the crop's start and
    stop per axis, written atomically: what ensembles and clean-ups are scored on later (load_probabilities)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    quantised = np.round(np.clip(probabilities, 0, 1) * 255).astype(np.uint8)
    bounds = np.array([[s.start, s.stop] for s in crop], dtype=np.int64)

    def write(target):
        with open(target, "wb") as stream:  # a stream: numpy would add ".npz" to the temporary's name
            np.savez_compressed(stream, probabilities=quantised, crop=bounds)

    write_atomically(write, path)


def load_probabilities(path):
    """(float32 region probabilities on the crop, the crop's slices) of a save_probabilities file."""
    with np.load(path) as data:
        return data["probabilities"].astype(np.float32) / 255, tuple(slice(*b) for b in data["crop"].tolist())


def evaluate(checkpoint, data_dir, split="validation", output_csv=None, device="auto", drop_modalities=(),
             predictions_dir=None, progress=True, model=None, members=None, catalogue=None, precision="fp32",
             window="patch", tta="off", probabilities_dir=None):
    """Segment the cases of `split` with the library pipeline; write per-case metrics and the means to CSV.

    checkpoint: a checkpoint file or run folder; or None and `model`, a catalogue model name ("ensemble" with
    `members`) of `catalogue` (default: the shipped one), whose entry gives the split (CSV default:
    runs/<model>/evaluation_<split>.csv).
    drop_modalities: roles (e.g. ("t1", "t2")) left out of every case, to measure a model trained for
    missing modalities. precision: the library's (fp32 by default, so that scores do not depend on the CPU).
    window: with a checkpoint, "patch" or "whole" (see model_from_checkpoint); a catalogue model uses its entry's.
    tta: the library's test-time augmentation, "off" or "mirror" (the seconds include all its passes).
    probabilities_dir: also write each case's region probabilities on its brain crop there (save_probabilities).
    Returns {"csv": path, "rows": [...], "means": {...}}.
    """
    if checkpoint is not None:
        path = checkpoint_file(checkpoint)
        state = ckpt.load(path)
        segmenter, run_dir = model_from_checkpoint(path, window=window), path.parent.parent
    else:
        segmenter, recorded = catalogue_segmenter(model, members, catalogue)
        state, run_dir = {"split": recorded}, Path("runs") / model
    pipeline = Pipeline(model=None, device=device, segmenter=segmenter, precision=precision, tta=tta)
    cases = discover(data_dir)
    case_ids = split_cases(state, data_dir, split)
    missing = [c for c in case_ids if c not in cases]
    if missing:
        raise FileNotFoundError(f"Cases of the split not found (with labels) in {data_dir}: {', '.join(missing[:5])}")
    if output_csv is None:
        name = split if split in ("validation", "train", "all") else "cases"
        suffix = f"_without_{'_'.join(drop_modalities)}" if drop_modalities else ""
        output_csv = run_dir / f"evaluation_{name}{suffix}.csv"
    rows = []
    for case_id in tqdm(case_ids, desc="Evaluating", unit="case", disable=not progress):
        files = cases[case_id]
        kept = CaseFiles(case_id, {r: p for r, p in files.files.items() if r not in set(drop_modalities)})
        case, reference = read_case(kept)
        start = time.perf_counter()
        result = pipeline.run(case)
        seconds = time.perf_counter() - start
        truth = read_labels_on_case_grid(labels_file(case_folder(files)), case.image.shape[1:], case.ijk_to_ras)
        row = {"case_id": case_id, **region_metrics(result.labels, truth, spacing_of(case.ijk_to_ras)),
               "seconds": round(seconds, 2)}
        rows.append(row)
        if predictions_dir is not None:
            Path(predictions_dir).mkdir(parents=True, exist_ok=True)
            write_labels(result.labels, reference, Path(predictions_dir) / f"{case_id}_seg.nii.gz")
        if probabilities_dir is not None:
            probabilities, crop = segmenter.crop_probabilities(case, pipeline.device, lambda *_: None,
                                                               precision=precision, tta=tta)
            save_probabilities(Path(probabilities_dir) / f"{case_id}.npz", probabilities, crop)
    means = {k: float(np.mean([r[k] for r in rows])) for k in METRIC_COLUMNS} if rows else {}
    mean_seconds = round(float(np.mean([r["seconds"] for r in rows])), 2) if rows else ""
    mean_row = {"case_id": MEAN_ROW, **means, "seconds": mean_seconds}
    write_csv([{k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in row.items()} for row in rows + [mean_row]],
              COLUMNS, output_csv)
    return {"csv": Path(output_csv), "rows": rows, "means": means}

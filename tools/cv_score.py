"""Scores of the cross-validation campaign's out-of-fold predictions (issue 30): a network or an ensemble (the mean
of its members' saved region probabilities) under clean-up variants, on every case held out by a finished fold of
every member. Legacy Dice, lesion-wise Dice as the official BraTS 2023 scorer defines it (Training.metrics.official_lesion_dice) and
as Panoptica's BraTS configuration computes it, of WT / TC / ET, their means with
the standard error, the worst case, and each variant's paired difference from the first one with its standard
error: the figures every ensemble, clean-up and `auto` choice is to be made on.

    .venv/bin/python tools/cv_score.py --data-dir ../shared/data/brats --choice hafb --choice hafb+missu \\
        --cleanup none=0,0,0,0 --cleanup catalogue=0.5,1,0.02,0 --cleanup small-et=0.5,1,0.02,1
(a clean-up is WT island, TC island, ET island mL and the smallest whole-ET mL: engine/postprocessing.Cleanup)
"""

import argparse
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from BrainTumorFusionLib.engine.postprocessing import Cleanup, brats_labels, clean_labels, regions_to_labels
from Training.data import regions_from_labels
from Training.evaluate import load_probabilities
from Training.metrics import official_lesion_dice, region_metrics

ROOT = Path(__file__).resolve().parent.parent
REGIONS = ("WT", "TC", "ET")


def held_out(cv_runs: Path, network: str) -> dict[str, Path]:
    """case -> its out-of-fold probabilities, from the folds of `network` that finished (EVALUATED)."""
    return {path.stem: path for fold in sorted((cv_runs / network).glob("fold*")) if (fold / "EVALUATED").is_file()
            for path in sorted((fold / "oof").glob("*.npz"))}


def mean_probabilities(paths: list[Path]):
    """Mean region probabilities of the members on their (shared) brain crop, and the crop."""
    total, crop = None, None
    for path in paths:
        probabilities, crop = load_probabilities(path)
        total = probabilities if total is None else total + probabilities
    return total / len(paths), crop


def score_case(truth_path: Path, paths: list[Path], cleanups: dict[str, Cleanup]) -> dict[str, dict[str, float]]:
    image = sitk.ReadImage(str(truth_path))
    truth = brats_labels(sitk.GetArrayFromImage(image))
    probabilities, crop = mean_probabilities(paths)
    if np.count_nonzero(truth[crop]) != np.count_nonzero(truth):
        raise ValueError(f"{truth_path.name}: tumor outside the brain crop")  # scoring on the crop would be wrong
    voxel_ml = float(np.prod(image.GetSpacing())) / 1000.0
    labels = regions_to_labels(probabilities)
    spacing = tuple(reversed(image.GetSpacing()))  # (D, H, W)
    scores = {}
    for name, cleanup in cleanups.items():
        cleaned = clean_labels(labels, voxel_ml, cleanup)
        scores[name] = region_metrics(cleaned, truth[crop], image.GetSpacing())
        for region, predicted, true in zip(REGIONS, regions_from_labels(cleaned), regions_from_labels(truth[crop])):
            scores[name][f"official_{region}"] = official_lesion_dice(predicted, true, spacing)
    return scores


def summary(rows: list[dict[str, float]], key: str) -> str:
    values = np.array([row[key] for row in rows])
    return f"{values.mean():.3f}±{values.std(ddof=1) / np.sqrt(len(values)):.3f}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--cv-runs", type=Path, default=ROOT / "runs" / "cv")
    parser.add_argument("--choice", action="append", required=True, help="a network, or members joined by +")
    parser.add_argument("--cleanup", action="append", default=[], metavar="NAME=WT,TC,ET,MIN_ET",
                        help="a clean-up variant (default: none); the first is the baseline of the differences")
    args = parser.parse_args(argv)
    cleanups = {}
    for text in args.cleanup or ["none=0,0,0,0"]:
        name, values = text.split("=")
        cleanups[name] = Cleanup(*(float(value) for value in values.split(",")))
    baseline = next(iter(cleanups))
    for choice in args.choice:
        members = choice.split("+")
        files = [held_out(args.cv_runs, member) for member in members]
        cases = sorted(set.intersection(*(set(found) for found in files)))
        if not cases:
            print(f"{choice}: no case held out by a finished fold of every member")
            continue
        scores = {name: [] for name in cleanups}
        for case in cases:
            for name, metrics in score_case(args.data_dir / case / f"{case}_seg.nii.gz",
                                            [found[case] for found in files], cleanups).items():
                scores[name].append(metrics)
        print(f"\n{choice}: {len(cases)} out-of-fold cases (mean ± standard error)")
        print(f"{'clean-up':12s} {'Dice WT':>12s} {'TC':>12s} {'ET':>12s}   {'official WT':>12s} {'TC':>12s} "
              f"{'ET':>12s}   {'panoptica WT':>12s} {'TC':>12s} {'ET':>12s}   worst WT   official ET vs {baseline}")
        for name, rows in scores.items():
            worst = min(row["dice_WT"] for row in rows)
            paired = [row["official_ET"] - base["official_ET"] for row, base in zip(rows, scores[baseline])]
            difference = f"{np.mean(paired):+.3f}±{np.std(paired, ddof=1) / np.sqrt(len(paired)):.3f}"
            print(f"{name:12s} " + " ".join(f"{summary(rows, f'dice_{r}'):>12s}" for r in REGIONS) + "   "
                  + " ".join(f"{summary(rows, f'official_{r}'):>12s}" for r in REGIONS) + "   "
                  + " ".join(f"{summary(rows, f'lesion_dice_{r}'):>12s}" for r in REGIONS)
                  + f"   {worst:8.3f}   {difference}")


if __name__ == "__main__":
    main()

"""Dice table for registration (prints; a benchmark, not a test): per case, the default model's WT / TC / ET Dice
against the ground truth on the case as BraTS aligned it, on a moved copy (T1, T2, FLAIR each moved by its own seeded
random rigid transform up to 15 degrees and 15 mm, FLAIR on 1 x 1 x 5 mm slices; Testing/moved_cases.py) without
registration, and on the moved copy with registration (--register on); and, as what registration can at best give
back, on the unmoved inputs put on the moved copies' grids (FLAIR on 5 mm slices; --register off). The labels are on T1ce's grid, which the
move leaves alone, so every row is scored against the same ground truth file.

    nice -n 10 .venv/bin/python Testing/benchmarks/registration_dice.py [CASE ...]
"""

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[2]
from BrainTumorFusionLib.engine.pipeline import Pipeline
from BrainTumorFusionLib.files.file_io import case_files_in, read_case
from Testing.moved_cases import region_dice, write_moved_case
from Testing.realdata import brats_case_dir

CASES = ("Brats18_CBICA_ABM_1", "Brats18_2013_20_1", "BraTS2021_00006")
# (row, inputs, --register): the BraTS files; unmoved but on the moved copies' grids (FLAIR on 5 mm slices, what
# registration can at best give back); moved without and with registration
SETTINGS = (("aligned", "aligned", "off"), ("aligned, FLAIR 5 mm", "thick", "off"),
            ("moved, no registration", "moved", "off"), ("moved, registered", "moved", "on"))


def main() -> None:
    cases = sys.argv[1:] or CASES
    pipeline = Pipeline(model="hafb")  # the shipped default segmentation model before "auto"
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for index, case_id in enumerate(cases):
            folder = brats_case_dir(case_id)
            truth = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / f"{case_id}_seg.nii.gz")))
            moved, _ = write_moved_case(folder, Path(scratch) / "moved", seed=index)
            thick, _ = write_moved_case(folder, Path(scratch) / "thick", seed=index, max_degrees=0.0, max_mm=0.0)
            for setting, source, register in SETTINGS:
                source = {"aligned": folder, "thick": thick, "moved": moved}[source]
                started = time.perf_counter()
                case, _ = read_case(case_files_in(source), register=register)
                result = pipeline.run(case)
                dice = region_dice(result.labels, truth)
                rows.append((case_id, setting, dice, time.perf_counter() - started, case.stages.get("register", 0)))
                print(f"{case_id:22s} {setting:24s} " + " ".join(f"{k} {v:.3f}" for k, v in dice.items())
                      + f"  mean {np.mean(list(dice.values())):.3f}  ({rows[-1][3]:.1f} s, registration "
                      f"{rows[-1][4]:.1f} s)", flush=True)
    print(f"\nDice against the ground truth, model {pipeline.segmenter.name} (mean over {len(cases)} cases)\n")
    print("| setting | WT | TC | ET | mean |\n|---|---:|---:|---:|---:|")
    for setting, _, _ in SETTINGS:
        values = np.array([[row[2][region] for region in ("WT", "TC", "ET")] for row in rows if row[1] == setting])
        mean = values.mean(axis=0)
        print(f"| {setting} | {mean[0]:.3f} | {mean[1]:.3f} | {mean[2]:.3f} | {mean.mean():.3f} |")


if __name__ == "__main__":
    main()

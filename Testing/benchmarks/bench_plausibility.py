"""The plausibility ranges, leave-one-out over the shared cases (a benchmark that prints, not a test).

For each figure a range is kept on (brain volume, each modality's neighbour correlation and skewness, the whole
tumor's volume in the ground truth) and each case: the range of the other 26 cases, and by how much this case lies
outside it. Printed per figure: the range over all 27, the leave-one-out false-alarm rate with no margin, the margin
that brings it to zero (the largest excess), and the range plausibility.py uses. A case never contributes to the
range it is checked against, so the margin estimates how far an unseen case may fall outside.

    nice -n 10 .venv/bin/python Testing/benchmarks/bench_plausibility.py
"""

import numpy as np
import SimpleITK as sitk

from BrainTumorFusionLib.files.file_io import case_files_in, read_case
from BrainTumorFusionLib.preparation import plausibility
from Testing.realdata import BRATS_DIR


def leave_one_out(values):
    """(false alarms with no margin, the margin that makes none): each value against the others' min-max."""
    values = np.asarray(values, dtype=float)
    excess = []
    for index, value in enumerate(values):
        others = np.delete(values, index)
        excess.append(max(others.min() - value, value - others.max(), 0.0))
    return int(np.count_nonzero(excess)), float(max(excess))


def main():
    figures = {}
    for folder in sorted(path for path in BRATS_DIR.iterdir() if path.is_dir()):
        case, _ = read_case(case_files_in(folder))
        labels = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / f"{folder.name}_seg.nii.gz")))
        row = {"brain mL": plausibility.brain_volume_ml(case),
               "tumor mL": np.count_nonzero(labels) * case.voxel_volume_ml}
        for role, (neighbours, skew) in plausibility.intensity_figures(case).items():
            row[f"{role} neighbours"], row[f"{role} skewness"] = neighbours, skew
        for name, value in row.items():
            figures.setdefault(name, []).append(value)
        print(folder.name, " ".join(f"{name} {value:.3f}" for name, value in row.items()), flush=True)
    used = {"brain mL": plausibility.BRAIN_ML, "tumor mL": plausibility.TUMOR_ML,
            **{f"{role} skewness": plausibility.SKEWNESS[role] for role in plausibility.SKEWNESS},
            **{f"{role} neighbours": (plausibility.MIN_NEIGHBOUR_CORRELATION, None) for role in plausibility.SKEWNESS}}
    print(f"\n{'figure':18s} {'27 cases':>17s} {'LOO alarms':>10s} {'LOO margin':>10s}  range used")
    for name, values in figures.items():
        alarms, margin = leave_one_out(values)
        print(f"{name:18s} {min(values):8.3f}-{max(values):<8.3f} {alarms:>7d}/27 {margin:10.3f}  {used.get(name, '')}")

if __name__ == "__main__":
    main()

"""What the RANO measurements add to a case's time (a benchmark that prints, not a test).

For each shared case's ground-truth labels (1 mm, 240 x 240 x 155): the seconds of the region volumes alone (what a
result computed before the measurements existed), of `rano.measure` (lesions, diameters, volumes), and of
`response.compare` of the case with itself (lesion matching with the identity transform); medians, maxima and the
ratio to the volumes alone, then the peak RSS of this process.

    nice -n 10 .venv/bin/python Testing/benchmarks/bench_measurements.py [--cases N]
"""

import argparse
import resource
import time

import numpy as np
import SimpleITK as sitk

from BrainTumorFusionLib.engine.postprocessing import brats_labels
from BrainTumorFusionLib.measurements.rano import measure
from BrainTumorFusionLib.measurements.regions import region_volumes
from BrainTumorFusionLib.measurements.response import compare
from BrainTumorFusionLib.preparation.geometry import ijk_to_ras_of
from Testing.realdata import BRATS_DIR


def timed(function, *arguments):
    start = time.perf_counter()
    result = function(*arguments)
    return result, time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=0, help="only the first N cases (default all)")
    args = parser.parse_args(argv)
    folders = sorted(path for path in BRATS_DIR.iterdir() if path.is_dir())[:args.cases or None]
    rows = []
    print(f"{'case':24s} {'lesions':>7s} {'volumes s':>9s} {'measure s':>9s} {'compare s':>9s}")
    for folder in folders:
        image = sitk.ReadImage(str(folder / f"{folder.name}_seg.nii.gz"))
        labels, ijk_to_ras = brats_labels(sitk.GetArrayFromImage(image)), ijk_to_ras_of(image)
        voxel_ml = abs(np.linalg.det(ijk_to_ras[:3, :3])) / 1000
        _, volumes_s = timed(region_volumes, labels, voxel_ml)
        measurements, measure_s = timed(measure, labels, ijk_to_ras)
        _, compare_s = timed(compare, measurements, measurements)
        rows.append((volumes_s, measure_s, compare_s))
        print(f"{folder.name:24s} {len(measurements.lesions):7d} {volumes_s:9.3f} {measure_s:9.3f} {compare_s:9.3f}")
    table = np.array(rows)
    median, largest = np.median(table, axis=0), table.max(axis=0)
    print(f"\n{len(rows)} cases; median / max seconds: volumes {median[0]:.3f} / {largest[0]:.3f}, measure "
          f"{median[1]:.3f} / {largest[1]:.3f} ({median[1] / median[0]:.0f}x the volumes alone), compare "
          f"{median[2]:.3f} / {largest[2]:.3f}")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GB")


if __name__ == "__main__":
    main()

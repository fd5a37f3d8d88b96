"""Registration figures on the shared BraTS cases (a benchmark that prints, not a test).

For each case: the similarity (normalised mutual information over T1ce's head, registration.py) of T1, T2 and FLAIR
with T1ce as BraTS aligned them, after a seeded random rigid move (up to 15 degrees and 15 mm; FLAIR on 1 x 1 x 5 mm
slices, Testing/moved_cases.py), and after registering the moved copy back; the seconds the registration of the
three took and the largest distance (mm) between where the found and the true transform put the reference's brain
box corners; the same for the head overlap (Dice of the head masks). Last, the ranges that registration.py's
thresholds (HEAD_ALIGNED, HEAD_POOR) come from and the peak RSS of this process.

    nice -n 10 .venv/bin/python Testing/benchmarks/bench_registration.py [--cases N] [--seed S]
"""

import argparse
import os
import resource
import time

import numpy as np
import SimpleITK as sitk

from BrainTumorFusionLib.preparation.registration import _Similarity, align, head_mask
from Testing.moved_cases import MOVED_ROLES, moved_case
from Testing.realdata import BRATS_DIR


def corner_error(reference: sitk.Image, found: sitk.Transform, truth: sitk.Transform) -> float:
    """Largest distance (mm) between the two transforms' images of the corners of the reference's head box."""
    kji = np.argwhere(head_mask(reference))
    low, high = kji.min(0)[::-1], kji.max(0)[::-1]
    corners = [reference.TransformIndexToPhysicalPoint([int(c) for c in np.where(bits, high, low)])
               for bits in np.ndindex(2, 2, 2)]
    return max(float(np.linalg.norm(np.subtract(found.TransformPoint(p), truth.TransformPoint(p)))) for p in corners)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=0, help="first N cases only (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    cases = sorted(p.name for p in BRATS_DIR.iterdir() if p.is_dir())[: args.cases or None]
    rows, seconds, cpu_seconds = [], [], []
    print(f"{'case':24s} {'role':5s} similarity: {'aligned':>7s} {'moved':>7s} {'registered':>10s}  head overlap: "
          f"{'aligned':>7s} {'moved':>7s} {'registered':>10s} {'error mm':>8s} {'s':>5s}")
    for index, case in enumerate(cases):
        images = {role: sitk.ReadImage(str(BRATS_DIR / case / f"{case}_{role}.nii.gz"))
                  for role in ("t1", "t1ce", "t2", "flair")}
        moved, truths = moved_case(images, seed=args.seed * 1000 + index)
        similarity = _Similarity(images["t1ce"])
        started, cpu_started = time.perf_counter(), time.process_time()
        for role in MOVED_ROLES:
            aligned, _ = align(images["t1ce"], images[role], role, "t1ce", register=False, similarity=similarity)
            found, _ = align(images["t1ce"], moved[role], role, "t1ce", similarity=similarity)
            error = corner_error(images["t1ce"], found.transform, truths[role].GetInverse())
            rows.append((role, aligned.before, found.before, found.after, error, aligned.overlap_before,
                         found.overlap_before, found.overlap_after))
            print(f"{case:24s} {role:5s} {'':11s} {aligned.before:7.3f} {found.before:7.3f} {found.after:10.3f}  "
                  f"{'':14s} {aligned.overlap_before:7.3f} {found.overlap_before:7.3f} {found.overlap_after:10.3f} "
                  f"{error:8.2f} {found.seconds:5.1f}", flush=True)
        seconds.append(time.perf_counter() - started)
        cpu_seconds.append(time.process_time() - cpu_started)
    print()
    for role in MOVED_ROLES:
        values = np.array([row[1:] for row in rows if row[0] == role])
        print(f"{role:5s} aligned {values[:, 0].min():.3f}-{values[:, 0].max():.3f}  moved {values[:, 1].min():.3f}-"
              f"{values[:, 1].max():.3f}  registered {values[:, 2].min():.3f}-{values[:, 2].max():.3f}; head overlap "
              f"aligned {values[:, 4].min():.3f}-{values[:, 4].max():.3f}  moved {values[:, 5].min():.3f}-"
              f"{values[:, 5].max():.3f}  registered {values[:, 6].min():.3f}-{values[:, 6].max():.3f}; error "
              f"median {np.median(values[:, 3]):.2f} max {values[:, 3].max():.2f} mm "
              f"({int((values[:, 3] > 5).sum())} over 5 mm)")
    # CPU seconds (all threads) do not depend on what else runs on the machine; wall seconds do.
    print(f"registration of T1, T2 and FLAIR per case (the aligned-similarity checks included): wall median "
          f"{np.median(seconds):.1f} s, max {max(seconds):.1f} s; CPU median {np.median(cpu_seconds):.1f} s, max "
          f"{max(cpu_seconds):.1f} s ({len(seconds)} cases, {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f}); peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()

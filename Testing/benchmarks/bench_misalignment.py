"""Which inputs the head-outline checks warn about (a benchmark that prints, not a test): for each shared case, its
T2 against its T1ce as BraTS aligned them, moved by a seeded random rigid move (up to 15 degrees and 15 mm) on the
same grid, and another patient's T2 (the case 7 places further in sorted order) on the same grid. For each: the
overlap coefficient that `auto` uses to decide whether to register (registration.HEAD_ALIGNED), the head Dice as it
lies (inputs._outline_warning), and for the moved and other-patient ones the head Dice after registration
(registration.HEAD_POOR); then the confusion table of what a default run says.

    nice -n 10 .venv/bin/python Testing/benchmarks/bench_misalignment.py
"""

import numpy as np
import SimpleITK as sitk

from BrainTumorFusionLib.preparation.registration import HEAD_ALIGNED, HEAD_POOR, _clipped, _Similarity, align
from Testing.moved_cases import moved, random_rigid
from Testing.realdata import BRATS_DIR


def read(folder, role):
    return sitk.Cast(sitk.ReadImage(str(folder / f"{folder.name}_{role}.nii.gz")), sitk.sitkFloat32)


def main():
    cases = sorted(path for path in BRATS_DIR.iterdir() if path.is_dir())
    rng = np.random.default_rng(0)
    warned = {"aligned": [], "moved": [], "other": []}
    print(f"{'case':24s} {'kind':8s} {'inside':>6s} {'dice':>6s} {'after':>6s} warned")
    for index, folder in enumerate(cases):
        reference = read(folder, "t1ce")
        similarity = _Similarity(reference)
        kinds = {"aligned": read(folder, "t2"), "moved": moved(read(folder, "t2"), random_rigid(rng, reference), None, 0.0),
                 "other": read(cases[(index + 7) % len(cases)], "t2")}
        for kind, image in kinds.items():
            identity = sitk.Euler3DTransform()
            inside = similarity.head_containment(_clipped(image), identity)
            dice = similarity.head_dice(_clipped(image), identity)
            after = ""
            if inside < HEAD_ALIGNED:  # what the default `auto` does: register, then judge the result
                alignment, _ = align(reference, image, "t2", "t1ce", similarity=similarity)
                after = alignment.overlap_after
                is_warned = after < HEAD_POOR
            else:
                is_warned = dice < HEAD_POOR
            warned[kind].append(is_warned)
            print(f"{folder.name:24s} {kind:8s} {inside:6.3f} {dice:6.3f} {after if after == '' else f'{after:6.3f}':>6s} "
                  f"{'yes' if is_warned else 'no'}", flush=True)
    print("\nDefault settings (register auto): warned / cases")
    for kind, flags in warned.items():
        print(f"  {kind:8s} {sum(flags)} / {len(flags)}")


if __name__ == "__main__":
    main()

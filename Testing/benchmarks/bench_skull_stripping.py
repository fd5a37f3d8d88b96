"""Seconds and peak memory of skull_stripping.brain_mask on head MRIs with their skull (a benchmark, not a test).

    .venv/bin/python Testing/benchmarks/bench_skull_stripping.py [--image HEAD.nii.gz ...] [--picture mask.png]

Default image: the mean T1 head that pydeface 2.1.0 ships (MIT; the test image of Testing/unit/
test_skull_stripping.py). Per image: the first call (model load included) and the median of the next --repeat
calls, the brain volume, and the process's peak resident memory so far (imports, image and model included).
--picture writes the masks over their images, axial / coronal / sagittal through the mask's centre, one row per
image."""

import argparse
import importlib.resources
import resource
import statistics
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from PIL import Image

from BrainTumorFusionLib.preparation.skull_stripping import brain_mask

RAS = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines((-1, 0, 0, 0, -1, 0, 0, 0, 1))


def default_image() -> Path:
    with importlib.resources.as_file(importlib.resources.files("pydeface") / "data" / "mean_reg2mean.nii.gz") as p:
        return Path(p)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def overlay_row(image: sitk.Image, mask: sitk.Image, height: int = 256) -> np.ndarray:
    """Axial, coronal and sagittal slices (radiological display: RAS arrays flipped for viewing) with the mask red."""
    array = sitk.GetArrayFromImage(sitk.DICOMOrient(image, RAS)).astype(np.float32)  # (S, A, R) = (K, J, I)
    inside = sitk.GetArrayFromImage(sitk.DICOMOrient(mask, RAS)).astype(bool)
    low, high = np.percentile(array, [1, 99.5])
    grey = np.clip((array - low) / max(high - low, 1e-6), 0, 1)
    k, j, i = (int(round(c.mean())) for c in np.nonzero(inside))
    panels = []
    for g, m in ((grey[k][::-1], inside[k][::-1]), (grey[:, j][::-1], inside[:, j][::-1]),
                 (grey[:, :, i][::-1], inside[:, :, i][::-1])):
        rgb = np.repeat(g[..., None], 3, axis=2)
        rgb[m] = 0.55 * rgb[m] + 0.45 * np.array([1.0, 0.15, 0.15])
        picture = Image.fromarray((rgb * 255).astype(np.uint8))
        panels.append(np.asarray(picture.resize((round(picture.width * height / picture.height), height))))
    return np.concatenate(panels, axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", type=Path, action="append", help="head MRI with its skull (repeatable)")
    parser.add_argument("--repeat", type=int, default=2, help="timed calls after the first (default 2)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "auto"))
    parser.add_argument("--picture", type=Path, help="PNG of the masks over the images")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    print(f"torch {torch.__version__}, {args.threads} CPU thread(s), device {args.device}")
    for path in args.image or [default_image()]:
        image = sitk.ReadImage(str(path))
        start = time.perf_counter()
        mask = brain_mask(image, device=args.device)
        first = time.perf_counter() - start
        seconds = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            brain_mask(image, device=args.device)
            seconds.append(time.perf_counter() - start)
        ml = float(sitk.GetArrayViewFromImage(mask).astype(bool).sum()) * float(np.prod(image.GetSpacing())) / 1000
        again = f", then median {statistics.median(seconds):.1f} s" if seconds else ""
        print(f"{path.name}: {image.GetSize()} voxels of {np.round(image.GetSpacing(), 2).tolist()} mm; brain_mask "
              f"{first:.1f} s first call{again}; brain {ml:.0f} mL; peak RSS {peak_rss_mib():.0f} MiB")
        rows.append(overlay_row(image, mask))
    if args.picture:
        width = max(row.shape[1] for row in rows)
        padded = [np.pad(row, ((0, 4), (0, width - row.shape[1]), (0, 0))) for row in rows]
        args.picture.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.concatenate(padded, axis=0)).save(args.picture)
        print(f"picture: {args.picture}")


if __name__ == "__main__":
    main()

"""Benchmark what a user waits for: every shipped segmentation model, the ensemble and auto, as whole processes.

Usage:  .venv/bin/python Testing/benchmarks/bench.py [--cases 6] [--repeats 3] [--models a,b,...]
                                                     [--precisions fp32,auto] [--no-anchor] [--runtime-python PY]

For each model and precision (`--precision fp32` against `auto`, the default):
- batch: `python -m BrainTumorFusionLib segment` over the first --cases validation cases of the default model's
  split (a folder of links), seconds per case = the whole command's wall time / cases (Python start, imports,
  model loading, reading, writing .seg.nrrd + .nii.gz + summary.csv all included);
- predict: `python -m BrainTumorFusionLib predict` on the first of those cases, median wall time of --repeats;
- peak RSS of each process (its own rusage, from os.wait4).
The anchor, in the same run: MONAI SegResNet (init_filters 16, untrained: speed only) sliding-window inference,
128^3 windows, overlap 0.25, fp32, on the 1 mm brain crop of the same case, reading included, as a whole process
(`bench.py anchor ...`), median of --repeats. It prints one markdown table with the ratios anchor / model.
Every process runs with --runtime-python (`make bench`: a venv with requirements.txt only, what a user of the
command line installs): the development venv also holds slicer-core, whose VTK brings matplotlib, and
tensorboard, which MONAI's import loads when present (about 1 s more per process).
Run it on an otherwise idle machine: figures measured beside other work are noise.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LIBRARY = ["-m", "BrainTumorFusionLib"]


def timed(command: list) -> tuple:
    """(wall seconds, peak RSS MiB) of a command run to completion; raises if it fails."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO)
    stderr = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise RuntimeError(f"{' '.join(map(str, command))} failed ({process.returncode}):\n{stderr.decode()[-2000:]}")
    return seconds, usage.ru_maxrss / 1024


def anchor(folder: Path) -> None:
    """The anchor's whole job in this process: read, brain crop at 1 mm, z-score, 128^3 windows, overlap 0.25."""
    import torch
    from monai.inferers import sliding_window_inference
    from monai.networks.nets import SegResNet

    from BrainTumorFusionLib.engine.preprocessing import prepare
    from BrainTumorFusionLib.files.file_io import case_files_in, read_case

    case, _ = read_case(case_files_in(folder))
    image = torch.from_numpy(prepare(case, (1.0, 1.0, 1.0)).image[None])
    torch.manual_seed(0)
    network = SegResNet(spatial_dims=3, init_filters=16, in_channels=4, out_channels=3).eval()
    with torch.inference_mode():
        sliding_window_inference(image, (128, 128, 128), 1, network, overlap=0.25, mode="gaussian")


def validation_cases(count: int) -> list:
    from BrainTumorFusionLib.engine.catalogue import Catalogue
    from BrainTumorFusionLib.files.cases import find_cases
    catalogue = Catalogue.load()  # the shipped segmentation models share one split
    entry = catalogue.entry(catalogue.names("segmentation")[0])
    data = REPO.parent / "shared" / "data" / "brats"
    available = {c.case_id: c for c in find_cases(data)}
    return [available[c] for c in entry.details["split"]["validation"] if c in available][:count]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", default="", help="comma-separated (default: every segmentation model, ensemble, auto)")
    parser.add_argument("--precisions", default="fp32,auto")
    parser.add_argument("--no-anchor", action="store_true")
    parser.add_argument("--runtime-python", default=sys.executable,
                        help="interpreter for predict and the anchor (default: this one)")
    args = parser.parse_args()

    from BrainTumorFusionLib.engine.catalogue import Catalogue
    models = [m for m in args.models.split(",") if m] or Catalogue.load().names("segmentation") + ["ensemble", "auto"]
    cases = validation_cases(args.cases)
    first = cases[0]
    predict_inputs = [f"--{role}={path}" for role, path in sorted(first.files.items())]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        inputs = Path(tmp) / "cases"
        inputs.mkdir()
        for case in cases:
            (inputs / case.case_id).mkdir()
            for path in case.files.values():
                (inputs / case.case_id / Path(path).name).symlink_to(Path(path).resolve())
        # One untimed start first: the first process after the page cache lost the libraries (torch, VTK) spent
        # 14 s more before its first case.
        timed([args.runtime_python] + LIBRARY + ["models"])
        anchor_runs = [] if args.no_anchor else [
            timed([args.runtime_python, __file__, "anchor", str(inputs / first.case_id)])
            for _ in range(args.repeats)]
        anchor_seconds = statistics.median(s for s, _ in anchor_runs) if anchor_runs else None
        anchor_rss = max((r for _, r in anchor_runs), default=None)
        for model in models:
            for precision in args.precisions.split(","):
                options = ["--model", model, "--precision", precision]
                out = Path(tmp) / f"batch-{model}-{precision}"
                batch_seconds, batch_rss = timed([args.runtime_python] + LIBRARY + [
                    "segment", "--input-dir", str(inputs), "--output-dir", str(out)] + options)
                predicts = [timed([args.runtime_python] + LIBRARY + ["predict", *predict_inputs, "--output-dir",
                                             str(Path(tmp) / f"predict-{model}-{precision}-{i}")] + options)
                            for i in range(args.repeats)]
                row = {"model": model, "precision": precision, "batch_s_per_case": batch_seconds / len(cases),
                       "batch_rss_mib": batch_rss, "predict_s": statistics.median(s for s, _ in predicts),
                       "predict_rss_mib": max(r for _, r in predicts)}
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)

    import torch
    print(f"\n{len(cases)} validation cases in the batch, predict on {first.case_id} (median of {args.repeats}); "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; whole processes; predict and anchor with "
          f"{args.runtime_python}\n")
    print("| model | precision | batch s/case | batch peak RSS (MiB) | predict s | predict peak RSS (MiB) "
          "| anchor / predict | auto vs fp32 (predict) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    fp32 = {r["model"]: r["predict_s"] for r in rows if r["precision"] == "fp32"}
    for r in rows:
        versus_anchor = f"{anchor_seconds / r['predict_s']:.2f}x" if anchor_seconds else "-"
        speedup = f"{fp32[r['model']] / r['predict_s']:.2f}x" if r["model"] in fp32 else "-"
        print(f"| {r['model']} | {r['precision']} | {r['batch_s_per_case']:.2f} | {r['batch_rss_mib']:.0f} | "
              f"{r['predict_s']:.2f} | {r['predict_rss_mib']:.0f} | {versus_anchor} | {speedup} |")
    if anchor_seconds:
        print(f"| anchor: MONAI SegResNet-16, 128^3, overlap 0.25, 1 mm crop | fp32 | - | - | {anchor_seconds:.2f} | "
              f"{anchor_rss:.0f} | 1.00x | - |")


if __name__ == "__main__":
    if sys.argv[1:2] == ["anchor"]:
        anchor(Path(sys.argv[2]))
    else:
        main()

"""Benchmark the shipped catalogue models on real cases: CPU seconds per case and peak memory, end to end.

Usage:  .venv/bin/python Testing/benchmarks/bench_models.py [--cases 3] [--threads 2] [--models a,b,...]
                                                            [--data-dir ../shared/data/brats]

Each model of Resources/models.json (segmentation models through `Pipeline.run`, the grading model through
`Pipeline.grade`; then the `ensemble` of the default members when no --models are given) runs on the first
--cases validation cases of its catalogue entry's split (the ensemble on the baseline's cases; reading a case
from disk is not timed, nor is one warm-up run; model loading is timed once, separately). It prints a
markdown table: parameters, load seconds, median seconds per case, ratio to the `segresnet` baseline measured in
the same run, and the peak resident memory growth of the process while the model ran (ru_maxrss, so only growth
beyond the previous peak shows; the baseline runs first, then catalogue order).
"""

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

from BrainTumorFusionLib.catalogue import ENSEMBLE, Catalogue
from BrainTumorFusionLib.file_io import find_cases, read_case
from BrainTumorFusionLib.pipeline import Ensemble, Model, Pipeline

REPO = Path(__file__).resolve().parents[2]

BASELINE = "segresnet"


def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def validation_cases(entry, data_dir, count):
    available = {case.case_id: case for case in find_cases(data_dir)}
    ids = [c for c in entry.details.get("split", {}).get("validation", []) if c in available]
    return [available[c] for c in ids[:count]]


def time_runs(run, cases):
    """Median seconds of run(case) over `cases`, after one untimed warm-up run on the first."""
    seconds = []
    run(read_case(cases[0])[0])
    for files in cases:
        case, _ = read_case(files)
        start = time.perf_counter()
        run(case)
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data" / "brats")
    parser.add_argument("--cases", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", default="", help="comma-separated catalogue names (default: all)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    catalogue = Catalogue.load()
    names = [n for n in args.models.split(",") if n] or catalogue.names()
    names = sorted(names, key=lambda n: n != BASELINE)  # the baseline first, for the ratios
    reference_cases = validation_cases(catalogue.entry(names[0]), args.data_dir, args.cases)
    rows = []
    for name in names:
        entry = catalogue.entry(name)
        before = peak_mb()
        start = time.perf_counter()
        model = Model.from_entry(entry, "cpu")
        load_seconds = time.perf_counter() - start
        params = sum(p.numel() for p in model.network.parameters())
        cases = validation_cases(entry, args.data_dir, args.cases) or reference_cases
        if entry.task == "grading":
            pipeline = Pipeline(model=None, device="cpu", grader=model)
            seconds = time_runs(pipeline.grade, cases)
        else:
            pipeline = Pipeline(device="cpu", segmenter=model)
            seconds = time_runs(pipeline.run, cases)
        rows.append((name, entry.task, params, load_seconds, seconds, peak_mb() - before))
        print(f"{name}: {seconds:.2f} s/case", file=sys.stderr, flush=True)
    if not args.models and len(catalogue.default_ensemble()) >= 2:
        before, start = peak_mb(), time.perf_counter()
        ensemble = Ensemble.from_catalogue(None, catalogue)
        load_seconds = time.perf_counter() - start
        params = sum(p.numel() for m in ensemble.members for p in m.network.parameters())
        seconds = time_runs(Pipeline(device="cpu", segmenter=ensemble).run, reference_cases)
        rows.append((ENSEMBLE, "segmentation", params, load_seconds, seconds, peak_mb() - before))
    baseline = next((r[4] for r in rows if r[0] == BASELINE), None)
    print(f"\n{args.cases} validation cases per model, median, torch {torch.__version__}, {args.threads} thread(s)\n")
    print("| model | task | params (M) | load (s) | s / case | x segresnet | peak RSS growth (MB) |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, task, params, load, seconds, memory in rows:
        ratio = f"{seconds / baseline:.2f}" if baseline else "-"
        print(f"| {name} | {task} | {params / 1e6:.2f} | {load:.2f} | {seconds:.2f} | {ratio} | {memory:.0f} |")


if __name__ == "__main__":
    main()

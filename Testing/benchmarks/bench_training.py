"""Training throughput: seconds per step of the shared loop for each network at the shipped configuration
(compact preset, 2 mm, 64^3 patches, batch 2), float32 (--amp none) against the automatic precision (--amp auto:
bf16 on CPUs with native bf16), in one run. A benchmark, not a test: prints a table.

    .venv/bin/python Testing/benchmarks/bench_training.py [--networks hafb,segresnet] [--steps 12] [--threads 2]
"""

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from Training.config import TrainConfig
from Training.segmentation import train

REPO = Path(__file__).resolve().parents[2]
SPLIT = REPO / "Training" / "splits" / "brats-shared-seed0.json"


def seconds_per_step(config: TrainConfig, warmup: int) -> float:
    stamps = []
    train(config, progress=False, callback=lambda step, network, parts: stamps.append(time.perf_counter()))
    steps = [b - a for a, b in zip(stamps[warmup:], stamps[warmup + 1:])]
    return statistics.median(steps)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--networks", default="hafb,segresnet,missu,transfuse,swinfuse")
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data" / "brats")
    parser.add_argument("--cache-dir", type=Path, default=REPO / "out" / "cache")
    parser.add_argument("--steps", type=int, default=12, help="timed steps after 3 warm-up steps")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as runs:
        for network in args.networks.split(","):
            timings = {}
            for amp in ("none", "auto"):
                config = TrainConfig(network=network, data_dir=str(args.data_dir), cache_dir=str(args.cache_dir),
                                     run_dir=f"{runs}/{network}-{amp}", split_file=str(SPLIT), steps=args.steps + 4,
                                     validate_every=0, checkpoint_every=10**6, threads=args.threads,
                                     workers=args.workers, amp=amp, log_every=10**6)
                timings[amp] = seconds_per_step(config, warmup=3)
                print(f"{network} amp={amp}: {timings[amp]:.3f} s/step", flush=True)
            rows.append((network, timings["none"], timings["auto"]))
    print(f"\n{args.threads} threads, {args.workers} data worker(s), torch {torch.__version__}, median of "
          f"{args.steps} steps after 3 warm-up steps; compact preset, 2 mm, 64^3, batch 2\n")
    print("| network | fp32 s/step | auto s/step | steps/hour gain |")
    print("|---|---:|---:|---:|")
    for network, fp32, auto in rows:
        print(f"| {network} | {fp32:.2f} | {auto:.2f} | {fp32 / auto:.2f}x |")
    print(json.dumps({n: {"fp32": f, "auto": a} for n, f, a in rows}))


if __name__ == "__main__":
    main()

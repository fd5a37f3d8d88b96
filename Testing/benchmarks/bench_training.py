"""Training throughput: seconds per step of the shared loop for each network at the shipped configuration
(compact preset, 2 mm, 64^3 patches, batch 2) in one run: as the shipped models were trained (float32, standard
memory layout), float32 channels-last, bfloat16 autocast channels-last, and the loop's defaults (channels-last,
--amp auto: bf16 where the network's recipe says so and the CPU has native bf16). Prints a table; a benchmark,
not a test.

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
# (label, --amp, channels_last): how the shipped models were trained, the two candidates, the loop's defaults.
SETTINGS = (("shipped", "none", False), ("fp32-cl", "none", True), ("bf16-cl", "bf16", True),
            ("defaults", "auto", True))


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
            for label, amp, channels_last in SETTINGS:
                config = TrainConfig(network=network, data_dir=str(args.data_dir), cache_dir=str(args.cache_dir),
                                     run_dir=f"{runs}/{network}-{label}", split_file=str(SPLIT),
                                     steps=args.steps + 4, validate_every=0, checkpoint_every=10**6,
                                     threads=args.threads, workers=args.workers, amp=amp,
                                     channels_last=channels_last, log_every=10**6)
                timings[label] = seconds_per_step(config, warmup=3)
                print(f"{network} {label}: {timings[label]:.3f} s/step", flush=True)
            rows.append((network, timings))
    print(f"\n{args.threads} threads, {args.workers} data worker(s), torch {torch.__version__}, median of "
          f"{args.steps} steps after 3 warm-up steps; compact preset, 2 mm, 64^3, batch 2\n")
    labels = [label for label, _, _ in SETTINGS]
    print("| network | " + " | ".join(f"{label} s/step" for label in labels) + " | defaults vs shipped |")
    print("|---|" + "---:|" * (len(labels) + 1))
    for network, timings in rows:
        cells = " | ".join(f"{timings[label]:.2f}" for label in labels)
        print(f"| {network} | {cells} | {timings['shipped'] / timings['defaults']:.2f}x |")
    print(json.dumps(dict(rows)))


if __name__ == "__main__":
    main()

"""Benchmark the network zoo on the CPU: parameters, FLOPs and eval-mode forward time.

Usage:  .venv/bin/python Testing/benchmarks/bench_zoo.py [--size 128] [--repeats 3] [--threads N]
                                                         [--networks hafb,missu,...]

For each zoo network (paper-sized variant, ``networks.build(name)``) and for the registry's
``segresnet`` (MONAI's SegResNet, init_filters=16, 4 inputs, 3 outputs) as the reference, it prints a
markdown table with the parameter count, the FLOPs of one forward pass at 1 x 4 x size^3 (counted
with torch.utils.flop_counter.FlopCounterMode during the warm-up run), and the median CPU time of
``--repeats`` eval-mode forward passes under ``torch.no_grad()`` after that warm-up, with its ratio
to SegResNet's time. The grader ``cmg`` gets the same 1 x 4 x size^3 input. A network whose module
cannot be imported (e.g. not written yet) is reported as "not available"; one that fails to build
or run is reported with its error, and the table is still printed. Progress goes to stderr.
"""

import argparse
import gc
import statistics
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from BrainTumorFusionLib import networks
from BrainTumorFusionLib.networks import registry

ZOO = ("hafb", "missu", "transfuse", "swinfuse", "cmg")
REFERENCE = "segresnet"


def measure(name, size, repeats):
    """Returns a dict with params, flops, seconds, or status ("not available" / "failed ...")."""
    try:
        cls = registry.network_class(name)
    except Exception as error:  # noqa: BLE001 - module missing, half-written or without the class
        return {"status": "not available", "detail": f"{type(error).__name__}: {error}"}
    try:
        net = cls()  # the paper-sized defaults, as networks.build(name)
    except Exception as error:  # noqa: BLE001 - report, keep benchmarking the others
        return {"status": f"failed to build: {type(error).__name__}"[:60], "detail": str(error)}
    net.eval()
    params = sum(p.numel() for p in net.parameters())
    x = torch.randn(1, 4, size, size, size)
    try:
        with torch.no_grad():
            with FlopCounterMode(display=False) as counter:
                out = net(x)  # warm-up, counted
            flops = counter.get_total_flops()
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                net(x)
                times.append(time.perf_counter() - start)
    except Exception as error:  # noqa: BLE001
        return {"status": f"failed to run: {type(error).__name__}"[:60], "detail": str(error)[:300], "params": params}
    finally:
        del net
        gc.collect()
    shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    return {"status": "ok", "params": params, "flops": flops, "seconds": statistics.median(times), "output": shape}


def table(results, size, reference_seconds):
    lines = [
        f"| network | task | params (M) | GFLOPs¹ @1x4x{size}³ | GMACs¹ | CPU forward (s)² | × SegResNet |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        task = "reference" if name == REFERENCE else networks.task_of(name)
        label = "SegResNet (MONAI, init_filters=16)" if name == REFERENCE else name
        if r["status"] != "ok":
            params = f"{r['params'] / 1e6:.2f}" if "params" in r else "-"
            lines.append(f"| {label} | {task} | {params} | {r['status']} | - | - | - |")
            continue
        ratio = f"{r['seconds'] / reference_seconds:.2f}" if reference_seconds else "-"
        lines.append(
            f"| {label} | {task} | {r['params'] / 1e6:.2f} | {r['flops'] / 1e9:.1f} | {r['flops'] / 2e9:.1f} "
            f"| {r['seconds']:.2f} | {ratio} |"
        )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128, help="cubic input size (default 128)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs after the warm-up (median)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--networks", default=",".join(ZOO), help="comma-separated zoo names")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = [n.strip() for n in args.networks.split(",") if n.strip()]
    unknown = [n for n in names if n not in networks.available()]
    if unknown:
        parser.error(f"unknown networks {unknown}; available: {networks.available()}")
    torch.manual_seed(0)

    results = {}
    for name in [REFERENCE] + names:
        print(f"[bench] {name} at 1x4x{args.size}^3 ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        results[name] = measure(name, args.size, args.repeats)
        detail = results[name].get("detail") or results[name].get("output")
        print(f"[bench]   {results[name]['status']} ({time.perf_counter() - start:.0f} s) {detail}",
              file=sys.stderr, flush=True)
    reference = results[REFERENCE]
    reference_seconds = reference["seconds"] if reference["status"] == "ok" else None

    print(table(results, args.size, reference_seconds))
    print()
    print(
        "¹ FlopCounterMode counts FLOPs (one multiply-add = 2 FLOPs) of one eval forward pass at "
        f"1x4x{args.size}³, every network including cmg on the same input; GMACs = GFLOPs / 2, the unit "
        "most papers (thop/ptflops) report as \"FLOPs\"."
    )
    print(
        f"² Median of {args.repeats} eval-mode forward passes under torch.no_grad() after one warm-up, "
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU thread(s); wall-clock on a possibly shared "
        "machine, so compare ratios within one run."
    )


if __name__ == "__main__":
    main()

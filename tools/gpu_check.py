"""GPU check: every shipped model, the out-of-memory fallback and training steps on a CUDA device, compared with
CPU float32 references made beforehand; prints one markdown table and exits 1 if a check fails.

Usage:
  .venv/bin/python tools/gpu_check.py prepare [--out out/gpu_check] [--data-dir ../shared/data/brats]
                                                           [--cases 2] [--models a,b,...]
  .venv/bin/python tools/gpu_check.py run [--cache out/gpu_check] [--device auto|cuda|cpu]
                                                       [--steps N] [--train-network hafb] [--models a,b,...]
                                                       [--precision auto|fp32|bf16|fp16] [--threads N]
  python3 tools/gpu_check.py train --out DIR OPTIONS-OF-python-m-Training-train

`prepare` (on the CPU, beside ../shared) reads the first --cases validation cases of the default model's recorded
split with the library (`file_io.read_case`), brings each onto the shipped models' grid with the pipeline's own
steps (brain crop, resampling to the model spacing; intensities rounded to int16 when they fit) and stores that
Case, so the run side needs neither ../shared nor a 1 mm volume: `cases/<case>.npz` (image, ijk_to_ras, present)
plus, made from exactly that stored Case, the CPU float32 result of every shipped model: the labels of
`Pipeline.run` (uint8, on the stored case grid) and the grade probabilities of `Pipeline.grade`. It also writes the
same cases in Training's cache format (`train/sp2x2x2/<case>.npz`, `Training.data.cache_case`) and a
`manifest.json` (cases, models and the SHA-256 of the weights the references were made with). The cache must stay
under 64 MiB (asserted); it travels with the working tree, which is limited as a whole, so the size of both is shown.

`run` (on the GPU machine; `--device cpu` runs the same code on the CPU to test the plumbing) rebuilds each Case
and, for every shipped model, runs the library's Pipeline on the device with precision "auto" (on CUDA the engine's
autocast; the precision column is what the network's convolutions actually computed in, read by forward hooks),
after one warm-up case on CUDA: segmentation passes when every region's Dice (WT, TC, ET) against the CPU labels is
at least 0.99, the grader when its probabilities are within 0.02. Then the out-of-memory fallback (CUDA only): the
process's GPU memory is capped with `torch.cuda.set_per_process_memory_fraction` (restored after) and one model runs
on CUDA: it passes when the engine warned that it fell back to the CPU and the labels still match. Then --steps
training steps (default 200 on CUDA, 5 on the CPU) of the segmentation recipe in the shared loop
(`Training.loop.run`) on the cached training cases: compact --train-network, 64^3 patches, batch 2, no data loader
workers, no validation, channels-last (CUDA only) and amp "auto" (as the loop resolves it): passes when every loss is
finite and, with 50 steps or more, the mean loss of the last fifth of the steps is below that of the first fifth.

Seconds: per case for models (mean over the cached cases), per step for training (median after the first steps,
data loading included). On an NVIDIA H200 the whole run took 56 s; it must stay under 10 minutes.
"""

import argparse
import gc
import json
import logging
import math
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch


def simpleitk_stand_in():
    """Let the library import where SimpleITK is missing (GPU images that hold torch but not SimpleITK, whose wheel
    would not fit beside the repository in what travels to the GPU machine). `run` reads cases already on the models'
    grid, so SimpleITK is imported but never called; each of its functions raises here if it is. Returns whether
    the stand-in was installed."""
    try:
        import SimpleITK  # noqa: F401
        return False
    except ImportError:
        pass
    import types

    def missing(name):
        if name.startswith("__"):
            raise AttributeError(name)

        def call(*args, **kwargs):
            raise RuntimeError(f"SimpleITK.{name} was called, but SimpleITK is not installed (gpu_check stand-in).")
        return call

    module = types.ModuleType("SimpleITK")
    module.__getattr__ = missing
    sys.modules["SimpleITK"] = module
    return True


SIMPLEITK_STAND_IN = simpleitk_stand_in()

from BrainTumorFusionLib.case import Case  # after the stand-in
from BrainTumorFusionLib.choices import DEFAULT_MODEL
from BrainTumorFusionLib.engine.catalogue import Catalogue
from BrainTumorFusionLib.engine.pipeline import Model, Pipeline
from BrainTumorFusionLib.engine.preprocessing import (
    brain_bounding_box,
    crop_matrix,
    needs_resampling,
    resample_channels,
    resampled_grid,
)
from BrainTumorFusionLib.files.cases import find_cases
from BrainTumorFusionLib.files.file_io import read_case

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CACHE = REPO / "out" / "gpu_check"
DEFAULT_DATA = REPO.parent / "shared" / "data" / "brats"
MAX_CACHE_BYTES = 64 * 2**20
TRAVEL_LIMIT_BYTES = 64 * 2**20  # what travels to the GPU machine: the working tree plus carried paths
DICE_TOLERANCE = 0.01
GRADE_TOLERANCE = 0.02
REGION_LABELS = {"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)}
BASELINE = "segresnet"  # the model the out-of-memory check runs (the first segmentation model if absent)
MIN_STEPS_FOR_DECREASE = 50
DTYPE_NAMES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}


# ---------------------------------------------------------------------------------------------- pure helpers


def region_dice(labels, reference):
    """{"WT", "TC", "ET": Dice} of two BraTS label maps (both regions empty -> 1.0)."""
    scores = {}
    for region, values in REGION_LABELS.items():
        a, b = np.isin(labels, values), np.isin(reference, values)
        total = int(a.sum()) + int(b.sum())
        scores[region] = 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total
    return scores


def compare_labels(per_case, tolerance=DICE_TOLERANCE):
    """(passed, figure) for a list of region_dice dicts: every region of every case within `tolerance` of 1."""
    if not per_case:
        return False, "no case"
    worst = {region: min(scores[region] for scores in per_case) for region in REGION_LABELS}
    lowest = min(worst.values())
    figure = f"min Dice {lowest:.4f} (" + ", ".join(f"{r} {v:.4f}" for r, v in worst.items()) + ")"
    return lowest >= 1.0 - tolerance, figure


def compare_grades(pairs, tolerance=GRADE_TOLERANCE):
    """(passed, figure) for a list of (probabilities, reference probabilities): largest difference <= tolerance."""
    if not pairs:
        return False, "no case"
    largest = max(float(np.max(np.abs(np.asarray(p, float) - np.asarray(r, float)))) for p, r in pairs)
    return largest <= tolerance, f"max difference {largest:.4f}"


def loss_verdict(losses, min_steps=MIN_STEPS_FOR_DECREASE):
    """(passed, figure) of a training run's per-step losses: all finite and, with min_steps or more, the mean of
    the last fifth below the mean of the first fifth."""
    if not losses:
        return False, "no step ran"
    if not all(math.isfinite(v) for v in losses):
        return False, f"non-finite loss at step {next(i for i, v in enumerate(losses) if not math.isfinite(v)) + 1}"
    k = max(1, len(losses) // 5)
    first, last = float(np.mean(losses[:k])), float(np.mean(losses[-k:]))
    figure = f"loss {first:.3f} -> {last:.3f} (mean of first/last {k})"
    if len(losses) < min_steps:
        return True, figure + f", finite; {len(losses)} steps too few to judge the decrease"
    return last < first, figure + (", finite, decreased" if last < first else ", did NOT decrease")


def dtype_names(dtypes):
    """'fp16', 'bf16+fp32', ... from a set of torch dtypes (unknown ones by their torch name)."""
    names = [DTYPE_NAMES.get(d, str(d).replace("torch.", "")) for d in dtypes]
    order = ["fp16", "bf16", "fp32"]
    return "+".join(sorted(set(names), key=lambda n: (order.index(n) if n in order else 9, n))) or "?"


def format_table(header, rows):
    """The report: header lines, then a markdown table of rows (check, device, precision, seconds, result)."""
    lines = list(header) + ["", "| check | device | precision | seconds | result |", "|---|---|---|---:|---|"]
    for row in rows:
        seconds = "-" if row["seconds"] is None else f"{row['seconds']:.3f}"
        cells = [row["check"], row["device"], row["precision"], seconds, row["result"]]
        lines.append("| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    return "\n".join(lines)


def row(check, device, precision, seconds, status, figure):
    return {"check": check, "device": str(device), "precision": precision, "seconds": seconds,
            "status": status, "result": f"{status} {figure}".strip()}


def folder_bytes(folder):
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def check_cache_size(folder, limit=MAX_CACHE_BYTES):
    """Size of the cache folder in bytes; AssertionError when it exceeds `limit`."""
    size = folder_bytes(folder)
    assert size <= limit, f"The cache {folder} holds {size / 2**20:.1f} MiB, more than {limit / 2**20:.0f} MiB."
    return size


def tracked_bytes(repo=REPO):
    """Bytes of the repository's tracked and untracked-not-ignored files (what travels besides carried paths), or
    None without git."""
    try:
        names = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=repo,
                               capture_output=True, check=True).stdout.split(b"\0")
    except (OSError, subprocess.CalledProcessError):
        return None
    paths = (repo / name.decode() for name in names if name)
    return sum(p.stat().st_size for p in paths if p.is_file())


class DtypeProbe:
    """Forward hooks recording the output dtypes of a network's convolutions and linear layers."""

    def __init__(self, network):
        self.dtypes = set()
        layers = (torch.nn.modules.conv._ConvNd, torch.nn.Linear)
        self.handles = [m.register_forward_hook(self.hook) for m in network.modules() if isinstance(m, layers)]

    def hook(self, module, inputs, output):
        if isinstance(output, torch.Tensor):
            self.dtypes.add(output.dtype)

    def close(self):
        for handle in self.handles:
            handle.remove()
        return dtype_names(self.dtypes)


def log(message):
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------- the cache


def storage_spacing(catalogue):
    """The finest spacing (mm, I J K) any shipped model asks for, or None (the case's own) when one keeps it."""
    spacings = [entry.spacing_mm for entry in map(catalogue.entry, catalogue.names())]
    if not spacings or any(s is None for s in spacings):
        return None
    return tuple(float(min(s[i] for s in spacings)) for i in range(3))


def compact_case(case, spacing):
    """The Case on the models' grid: the pipeline's brain crop and resampling (preprocessing.prepare without the
    z-score), so the stored Case is small and the pipeline run on it resamples nothing."""
    crop = brain_bounding_box(case.image)
    image = case.image[(slice(None),) + crop]
    matrix = crop_matrix(case.ijk_to_ras, crop)
    if needs_resampling(matrix, spacing):
        shape, target = resampled_grid(image.shape[1:], matrix, spacing)
        image, matrix = resample_channels(image, matrix, shape, target), target
    return Case(name=case.name, image=np.ascontiguousarray(image, dtype=np.float32), ijk_to_ras=matrix,
                present=tuple(case.present))


def packed_image(image):
    """int16 when the intensities fit (rounded; raw MRI values), else float16."""
    finite_max = float(np.abs(image).max()) if image.size else 0.0
    if 255 < finite_max < 32000:
        return np.rint(image).astype(np.int16)
    return image.astype(np.float16)


def stored_case(path):
    """(Case, {"labels": {model: uint8}, "grades": {model: probabilities}}) of a cases/<case>.npz file."""
    with np.load(path) as stored:
        case = Case(name=str(stored["name"]), image=stored["image"].astype(np.float32),
                    ijk_to_ras=stored["ijk_to_ras"].astype(np.float64),
                    present=tuple(bool(p) for p in stored["present"]))
        references = {"labels": {}, "grades": {}}
        for key in stored.files:
            kind, _, model = key.partition("__")
            if kind in references and model:
                references[kind][model] = stored[key]
    return case, references


def validation_ids(catalogue, count):
    entry = catalogue.entry(DEFAULT_MODEL if DEFAULT_MODEL in catalogue.names() else catalogue.names()[0])
    return list(entry.details.get("split", {}).get("validation", []))[:count]


def prepare(out, data_dir, case_count=2, model_names=None, case_ids=None):
    """Write the cache (see the module docstring); returns the manifest. `case_ids` replaces the validation cases."""
    from Training.config import TrainConfig
    from Training.data import cache_case

    out = Path(out)
    catalogue = Catalogue.load()
    names = model_names or catalogue.names()
    available = {c.case_id: c for c in find_cases(data_dir)}
    ids = [c for c in (case_ids or validation_ids(catalogue, len(available))) if c in available][:case_count]
    if len(ids) < case_count:
        raise SystemExit(f"Found {len(ids)} of the {case_count} validation cases in {data_dir}.")
    spacing = storage_spacing(catalogue)
    for old in ("cases", "train"):  # a previous cache's parts only: --out may name a folder holding other things
        shutil.rmtree(out / old, ignore_errors=True)
    (out / "manifest.json").unlink(missing_ok=True)
    (out / "cases").mkdir(parents=True)
    cases = {}
    for case_id in ids:
        case, _ = read_case(available[case_id])
        compact = compact_case(case, spacing)
        cases[case_id] = {"name": np.array(case_id), "image": packed_image(compact.image),
                          "ijk_to_ras": compact.ijk_to_ras, "present": np.array(compact.present, dtype=bool)}
    # The references are made from exactly what the run side reads back.
    rebuilt = {c: Case(name=c, image=a["image"].astype(np.float32), ijk_to_ras=a["ijk_to_ras"],
                       present=tuple(bool(p) for p in a["present"])) for c, a in cases.items()}
    manifest = {"cases": ids, "spacing_mm": spacing, "reference": "CPU float32 (precision fp32)", "models": {},
                "torch": torch.__version__, "created": time.strftime("%Y-%m-%d %H:%M:%S")}
    for name in names:
        entry = catalogue.entry(name)
        model = Model.from_entry(entry, "cpu")
        for case_id, case in rebuilt.items():
            start = time.perf_counter()
            if entry.task == "grading":
                pipeline = Pipeline(model=None, device="cpu", grader=model, precision="fp32")
                grades = pipeline.grade(case)
                cases[case_id][f"grades__{name}"] = np.array(list(grades.values()), dtype=np.float64)
                figure = grades
            else:
                labels = Pipeline(device="cpu", segmenter=model, precision="fp32").run(case).labels
                cases[case_id][f"labels__{name}"] = labels.astype(np.uint8)
                figure = f"WT {int(np.count_nonzero(labels))} voxels"
            log(f"prepare: {name} on {case_id}: {figure} ({time.perf_counter() - start:.1f} s)")
        manifest["models"][name] = {"task": entry.task, "sha256": entry.sha256}
    for case_id, arrays in cases.items():
        np.savez_compressed(out / "cases" / f"{case_id}.npz", **arrays)
    train_spacing = TrainConfig().spacing
    for case_id in ids:
        cache_case(available[case_id], out / "train", train_spacing)
    manifest["train"] = {"folder": "train", "spacing_mm": train_spacing, "cases": ids}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    size = check_cache_size(out)  # the whole folder: what `carry` takes along
    manifest["bytes"] = size
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    tree = tracked_bytes()
    travel = "" if tree is None else (f"; with the working tree ({tree / 2**20:.1f} MiB) {(tree + size) / 2**20:.1f} "
                                      f"of the {TRAVEL_LIMIT_BYTES / 2**20:.0f} MiB that may travel")
    print(f"Cache {out}: {size / 2**20:.2f} MiB ({len(ids)} cases, {len(names)} models){travel}.")
    if tree is not None and tree + size > TRAVEL_LIMIT_BYTES:
        print("WARNING: the working tree and the cache together exceed what travels to the GPU machine.")
    return manifest


# ---------------------------------------------------------------------------------------------- the checks


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def release(device):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def check_model(entry, cases, device, precision="auto"):
    """One shipped model on every cached case on `device` against its CPU reference."""
    model = Model.from_entry(entry, device)
    grading = entry.task == "grading"
    pipeline = (Pipeline(model=None, device=str(device), grader=model, precision=precision) if grading
                else Pipeline(device=str(device), segmenter=model, precision=precision))
    run = pipeline.grade if grading else (lambda case: pipeline.run(case).labels)
    kind = "grades" if grading else "labels"
    missing = [case.name for case, references in cases if entry.name not in references[kind]]
    if missing:
        return row(entry.name, device, "-", None, "FAIL", f"no reference for {', '.join(missing)}: run prepare")
    if device.type == "cuda":
        run(cases[0][0])  # warm-up: CUDA context, cuDNN, allocator
        synchronize(device)
    probe = DtypeProbe(model.network)
    seconds, outcomes = [], []
    try:
        for case, references in cases:
            start = time.perf_counter()
            out = run(case)
            synchronize(device)
            seconds.append(time.perf_counter() - start)
            reference = references[kind][entry.name]
            outcomes.append((list(out.values()), reference) if grading else region_dice(out, reference))
    finally:
        precision = probe.close()
        model.network.to("cpu")  # frees the GPU for the next model
        release(device)
    passed, figure = compare_grades(outcomes) if grading else compare_labels(outcomes)
    return row(entry.name, device, precision, statistics.mean(seconds), "PASS" if passed else "FAIL", figure)


class Messages(logging.Handler):
    """The library's log records (warnings and up) while it is installed."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def check_oom_fallback(entry, case, reference, device, precision="auto"):
    """The model loaded on the CPU, run on CUDA with the process's GPU memory capped to about 1 MiB: the engine must
    warn, fall back to the CPU and still give the reference labels."""
    check = f"OOM fallback ({entry.name})"
    device = torch.device("cuda", torch.cuda.current_device()) if device.index is None else device  # the cap needs one
    model = Model.from_entry(entry, "cpu")
    pipeline = Pipeline(device=str(device), segmenter=model, precision=precision)
    release(device)
    total = torch.cuda.get_device_properties(device).total_memory
    handler, library = Messages(), logging.getLogger("BrainTumorFusionLib")
    library.addHandler(handler)
    probe = DtypeProbe(model.network)
    start = time.perf_counter()
    try:
        torch.cuda.set_per_process_memory_fraction(min(2**20 / total, 1.0), device)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            labels = pipeline.run(case).labels
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, device)
        library.removeHandler(handler)
        precision = probe.close()
        release(device)
    seconds = time.perf_counter() - start
    messages = handler.messages + [str(w.message) for w in caught]
    fell_back = any("memory" in m.lower() for m in messages)
    passed, figure = compare_labels([region_dice(labels, reference)])
    if not fell_back:
        return row(check, "cuda (capped)", precision, seconds, "FAIL",
                   f"no out-of-memory fallback warning ({'; '.join(messages) or 'no warning'}); {figure}")
    return row(check, "cuda (capped) -> cpu", precision, seconds, "PASS" if passed else "FAIL",
               f"fell back with a warning; {figure}")


def make_cached_recipe():
    """The segmentation recipe training on the cases already in config.cache_dir (no discovery, no validation)."""
    from Training.data import cache_path
    from Training.segmentation import SegmentationRecipe

    class CachedSegmentationRecipe(SegmentationRecipe):
        def prepare(self, context, run_dir):
            folder = cache_path(self.config.cache_dir, self.config.spacing, "any").parent
            ids = sorted(p.stem for p in folder.glob("*.npz"))
            if not ids:
                raise FileNotFoundError(f"No cached training case in {folder}: run prepare.")
            self.split = {"train": ids, "validation": []}
            self.paths = {case_id: folder / f"{case_id}.npz" for case_id in ids}

    return CachedSegmentationRecipe


def check_training(train_dir, spacing, device, steps, network, threads=0):
    """`steps` steps of the segmentation recipe in the shared loop on the cached training cases."""
    from Training.config import TrainConfig
    from Training.loop import autocast_dtype, run

    check = f"train {network} x {steps} steps"
    run_dir = Path(tempfile.mkdtemp(prefix="gpu-check-run-"))
    config = TrainConfig(network=network, network_config=None, cache_dir=str(train_dir), run_dir=str(run_dir),
                         spacing=list(spacing), patch_size=[64, 64, 64], batch_size=2, steps=steps, lr=1e-3,
                         checkpoint_every=max(steps, 1), validate_every=0, workers=0, amp="auto", channels_last=True,
                         device=str(device), log_every=max(1, min(10, steps)), threads=threads)
    stamps, probe, layout = [], {}, {}

    def callback(step, trained, parts):
        stamps.append(time.perf_counter())
        if step == 1:  # observe the remaining steps: what autocast computes in, the memory layout
            probe["dtypes"] = DtypeProbe(trained)
            convs = [m.weight for m in trained.modules() if isinstance(m, torch.nn.Conv3d)]
            layout["channels_last"] = bool(convs) and all(
                w.is_contiguous(memory_format=torch.channels_last_3d) for w in convs)

    try:
        result = run(make_cached_recipe(), config, progress=False, callback=callback)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    observed = probe["dtypes"].close() if "dtypes" in probe and probe["dtypes"].dtypes else None
    amp = autocast_dtype(config, device)
    precision = observed or ("fp32" if amp is None else DTYPE_NAMES.get(amp, str(amp)))
    precision += " channels-last" if layout.get("channels_last") else ""
    intervals = np.diff(stamps)
    skip = min(10, len(intervals) // 2)
    per_step = float(np.median(intervals[skip:])) if len(intervals) else None
    passed, figure = loss_verdict(result["losses"])
    return row(check, device, precision, per_step, "PASS" if passed else "FAIL", figure)


def header_lines(device):
    cuda = torch.version.cuda or "none"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        lines = [f"GPU check: torch {torch.__version__}, CUDA {cuda}, device {name}"]
    else:
        lines = [f"GPU check: torch {torch.__version__}, CUDA {cuda}, device CPU ({torch.get_num_threads()} threads)",
                 "NOT RUN ON A GPU: CPU plumbing only (no CUDA device, or --device cpu); the OOM check is skipped."]
    if SIMPLEITK_STAND_IN:
        lines.append("SimpleITK is not installed: a stand-in let the library import (the cached cases need no resampling).")
    return lines


def run_checks(cache, device, steps=None, train_network="hafb", model_names=None, threads=0, precision="auto"):
    """Every check on `device` (`precision`: the engine's, when it takes one); returns (header lines, rows)."""
    cache = Path(cache)
    device = torch.device(device)
    if threads:
        torch.set_num_threads(threads)
    manifest = json.loads((cache / "manifest.json").read_text())
    steps = steps if steps is not None else (200 if device.type == "cuda" else 5)
    cases = [stored_case(cache / "cases" / f"{case_id}.npz") for case_id in manifest["cases"]]
    catalogue = Catalogue.load()
    names = model_names or catalogue.names()
    rows = []
    for name in names:
        entry = catalogue.entry(name)
        recorded = manifest["models"].get(name)
        if recorded is None or recorded["sha256"] != entry.sha256:
            why = "not in the cache" if recorded is None else "reference made with other weights"
            rows.append(row(name, device, "-", None, "FAIL", f"{why}: run prepare again"))
            continue
        log(f"run: {name} on {device}")
        try:
            rows.append(check_model(entry, cases, device, precision))
        except Exception as error:  # noqa: BLE001 - one broken model must not hide the others
            rows.append(row(name, device, "-", None, "FAIL", f"{type(error).__name__}: {error}"))
    segmenters = [n for n in names if catalogue.entry(n).task == "segmentation" and n in manifest["models"]]
    oom_model = BASELINE if BASELINE in segmenters else (segmenters[0] if segmenters else None)
    if device.type != "cuda":
        rows.append(row("OOM fallback", device, "-", None, "SKIP", "needs CUDA"))
    elif oom_model is None:
        rows.append(row("OOM fallback", device, "-", None, "FAIL", "no segmentation model with a reference"))
    else:
        log(f"run: out-of-memory fallback with {oom_model}")
        case, references = cases[0]
        try:
            rows.append(check_oom_fallback(catalogue.entry(oom_model), case, references["labels"][oom_model], device,
                                           precision))
        except Exception as error:  # noqa: BLE001 - report it in the table
            rows.append(row(f"OOM fallback ({oom_model})", device, "-", None, "FAIL",
                            f"{type(error).__name__}: {error}"))
    log(f"run: {steps} training steps of {train_network} on {device}")
    train = manifest["train"]
    try:
        rows.append(check_training(cache / train["folder"], train["spacing_mm"], device, steps, train_network,
                                   threads))
    except Exception as error:  # noqa: BLE001 - report it in the table
        rows.append(row(f"train {train_network} x {steps} steps", device, "-", None, "FAIL",
                        f"{type(error).__name__}: {error}"))
    return header_lines(device), rows


def train_without_simpleitk(options, out):
    """`python -m Training train OPTIONS` where SimpleITK may be missing (the stand-in above; a prepared cache with
    --split-file needs no image reading), then the run's best.pt and last.pt without optimizer state and in float16
    into `out` (small enough to come back from the GPU machine; `Training export` and `evaluate` read them). The
    copies are made even when the training is stopped (SIGINT, e.g. from `timeout -s INT`)."""
    from Training import checkpoint as ckpt
    from Training.__main__ import main as training_main

    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--run-dir", required=True, type=Path)
    run_dir = parser.parse_known_args(options)[0].run_dir
    try:
        return training_main(["train", *options])
    except KeyboardInterrupt:
        log("train: interrupted")
        return 130
    finally:
        out.mkdir(parents=True, exist_ok=True)
        for name in (ckpt.BEST, ckpt.LAST):
            path = run_dir / "checkpoints" / name
            if path.is_file():
                state = ckpt.load(path)
                kept = {k: v for k, v in state.items() if k not in ("optimizer", "scheduler", "scaler", "rng")}
                kept["model"] = {k: v.half() if v.is_floating_point() else v for k, v in state["model"].items()}
                ckpt.save(kept, out / name)
                log(f"train: {out / name} (step {state['step']})")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("prepare", help="write the cache (CPU, needs the data)")
    make.add_argument("--out", type=Path, default=DEFAULT_CACHE)
    make.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    make.add_argument("--cases", type=int, default=2)
    make.add_argument("--models", default="", help="comma-separated catalogue names (default: all)")
    check = commands.add_parser("run", help="run the checks on the device and print the table")
    check.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    check.add_argument("--device", default="auto", help="auto (CUDA when available), cuda or cpu")
    check.add_argument("--steps", type=int, default=None, help="training steps (default 200 on CUDA, 5 on CPU)")
    check.add_argument("--train-network", default="hafb")
    check.add_argument("--models", default="", help="comma-separated catalogue names (default: all)")
    check.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    check.add_argument("--precision", default="auto", help="the engine's precision for the models (auto, fp32, "
                       "bf16, fp16), where the library takes one")
    train = commands.add_parser("train", help="python -m Training train without SimpleITK, then small checkpoints")
    train.add_argument("--out", type=Path, required=True, help="folder for the float16 best.pt / last.pt copies")
    args, rest = parser.parse_known_args(argv)
    if args.command == "train":
        return train_without_simpleitk(rest, args.out)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    names = [n for n in args.models.split(",") if n] or None
    if args.command == "prepare":
        prepare(args.out, args.data_dir, args.cases, names)
        return 0
    from BrainTumorFusionLib.engine.inference import choose_device

    device = choose_device(args.device)
    start = time.perf_counter()
    header, rows = run_checks(args.cache, device, args.steps, args.train_network, names, args.threads, args.precision)
    header.append(f"Cache {args.cache}; total {time.perf_counter() - start:.0f} s. Seconds: per case (models, after "
                  "a warm-up case on CUDA), per step (training). References: CPU float32.")
    print(format_table(header, rows))
    failed = [r["check"] for r in rows if r["status"] == "FAIL"]
    if failed:
        print(f"\nFAILED: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

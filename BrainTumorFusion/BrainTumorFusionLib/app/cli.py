"""Command line: `segment` (batch over a folder), `predict` (one case, used by the GUI's background
process), `compare` (follow-up exams against their baselines), `models` (list the catalogue)."""

import argparse
import json
import logging
import signal
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

from ..errors import BrainTumorFusionError, Cancelled
from ..modalities import MODALITIES, present_of
from ..options import SegmentationOptions
from .process_runner import format_progress, format_result

if TYPE_CHECKING:
    from ..engine.catalogue import Catalogue
    from ..engine.pipeline import Pipeline


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m BrainTumorFusionLib",
                                     description="Brain tumor segmentation and grading on T1, T1ce, T2 and FLAIR.")
    commands = parser.add_subparsers(dest="command", required=True)

    segment = commands.add_parser("segment", help="segment every case folder of --input-dir")
    segment.add_argument("--input-dir", required=True, type=Path)
    segment.add_argument("--output-dir", required=True, type=Path)
    segment.add_argument("--overwrite", action="store_true",
                         help="recompute cases that are already finished, also those made with other settings")
    segment.add_argument("--num-parts", type=int, default=1, metavar="N",
                         help="split the cases into N parts, e.g. the jobs of a cluster array sharing one output "
                         "folder (default 1)")
    segment.add_argument("--part-id", type=int, default=0, metavar="K",
                         help="run part K (0 to N-1): the cases whose position in the sorted list modulo N is K")
    segment.add_argument("--preview", action="store_true",
                         help="also write <id>_preview.png: slices through the tumor, FLAIR and T1ce with labels")
    SegmentationOptions.add_arguments(segment)

    predict = commands.add_parser("predict", help="segment one case given as files (PROGRESS lines on stdout, then "
                                  "a RESULT line: see process_runner)")
    for role in MODALITIES:
        predict.add_argument(f"--{role}", type=Path)
    predict.add_argument("--output-dir", required=True, type=Path)
    predict.add_argument("--name", default="case")
    SegmentationOptions.add_arguments(predict)
    predict.add_argument("--each-input-grid", action="store_true",
                         help="also write labels_<role>.nrrd: the labels on each other input's own grid (through the "
                         "inverse of its registration)")

    compare = commands.add_parser("compare", help="compare follow-up exams with their baselines: both segmented, "
                                  "the follow-up registered onto the baseline, RANO measurements and their changes")
    compare.add_argument("--baseline", type=Path, help="the baseline exam's case folder (with --follow-up)")
    compare.add_argument("--follow-up", type=Path, help="the follow-up exam's case folder (with --baseline)")
    compare.add_argument("--pairs", type=Path, metavar="CSV",
                         help="many pairs: a CSV with columns baseline, follow_up and optionally id (folders relative "
                         "to the CSV's own)")
    compare.add_argument("--output-dir", required=True, type=Path)
    SegmentationOptions.add_arguments(compare)

    models = commands.add_parser("models", help="list the models of the catalogue")
    models.add_argument("--catalogue", action="append", default=[], metavar="JSON")
    return parser


def make_pipeline(options: SegmentationOptions, catalogue: Optional["Catalogue"] = None) -> "Pipeline":
    from ..engine.pipeline import Pipeline

    return Pipeline.from_options(options, catalogue)


def run_segment(args: argparse.Namespace) -> int:
    from ..engine.catalogue import Catalogue
    from ..engine.inference import autocast_dtype, choose_device
    from .batch import run_batch
    from .records import SUMMARY_NAME, RunSettings

    options = SegmentationOptions.from_args(args)
    catalogue = Catalogue.load(options.catalogues)
    settings = RunSettings.from_catalogue(catalogue, options)  # model names and members
    # Device and precision too, before the batch creates the output folder (the weights load at the first case)
    autocast_dtype(options.precision, choose_device(options.device))
    # A cluster cancels or times out a job with SIGTERM: stop as on Ctrl-C, removing the temporary being written.
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        rows = run_batch(args.input_dir, args.output_dir, settings, lambda: make_pipeline(options, catalogue),
                         overwrite=args.overwrite, num_parts=args.num_parts, part_id=args.part_id,
                         preview=args.preview)
    finally:
        signal.signal(signal.SIGTERM, previous)
    share = f" in part {args.part_id} of parts 0-{args.num_parts - 1}" if args.num_parts > 1 else ""
    if not rows:  # only a part can have none: find_cases refuses an input without cases
        print(f"No case{share}: the input has fewer cases than --num-parts; this part had nothing to do.")
        return 0
    done, failed, claimed = ([row["case_id"] for row in rows if row["status"] == status]
                             for status in ("done", "failed", "claimed"))
    others = f", {len(claimed)} claimed by another run" if claimed else ""
    print(f"{len(done)} of {len(rows)} cases done{share}{others}; summary in {args.output_dir / SUMMARY_NAME}")
    if claimed:
        print(f"Claimed by another run: {', '.join(claimed)}. If no other run is going on, delete their .<id>.claim "
              f"files in {args.output_dir} and run again.", file=sys.stderr)
    if failed:
        print(f"Failed: {', '.join(failed)} (reasons in summary.csv and <id>.json)", file=sys.stderr)
    return 1 if failed else 0


def run_predict(args: argparse.Namespace) -> int:
    """Writes labels.nrrd (on the reference input's grid) and result.json into --output-dir."""
    import SimpleITK as sitk

    from ..files.file_io import CaseFiles, check_writable_folder, read_case, write_atomically, write_labels
    from ..preparation.inputs import labels_on_input_grids
    from ..progress import share

    def report(fraction, message):
        print(format_progress(fraction, message), flush=True)

    # Registration and skull stripping, when they run (case.stages), take about as long as the segmentation: half
    # the bar each.
    files = {role: getattr(args, role) for role in MODALITIES if getattr(args, role) is not None}
    options = SegmentationOptions.from_args(args)
    pipeline = make_pipeline(options)
    pipeline.check_modalities(present_of(files))  # before registration; model errors before the output folder
    case, reference = read_case(CaseFiles(args.name, files), **options.preparation(), progress=share(report, 0.0, 0.5))
    check_writable_folder(args.output_dir)
    result = pipeline.run(case, share(report, 0.5 if case.stages else 0.0, 1.0))
    write_labels(result.labels, reference, args.output_dir / "labels.nrrd")
    if args.each_input_grid:
        for role, labels in labels_on_input_grids(result.labels, case).items():
            write_labels(sitk.GetArrayFromImage(labels), labels, args.output_dir / f"labels_{role}.nrrd")
    summary = {"case_name": result.case_name, "volumes_ml": result.volumes_ml,
               "grade_probabilities": result.grade_probabilities, "model": result.model,
               "model_choice": result.model_choice, "device": result.device, "tta": pipeline.tta,
               "seconds": result.seconds,
               "warnings": result.warnings, "stages": result.stages, "reference": case.reference_role,
               "measurements": result.measurements.as_json(),
               "registration": [alignment.as_json() for alignment in case.alignments.values()]}
    write_atomically(lambda target: Path(target).write_text(json.dumps(summary, indent=1)),
                     args.output_dir / "result.json")
    return 0


def run_compare(args: argparse.Namespace) -> int:
    from .compare import COMPARISONS_NAME, pair_of, read_pairs, run_pairs

    options = SegmentationOptions.from_args(args)
    pairs = read_pairs(args.pairs) if args.pairs else [pair_of(args.baseline, args.follow_up)]
    rows = run_pairs(pairs, args.output_dir, lambda: make_pipeline(options), options.preparation())
    failed = [row["pair_id"] for row in rows if row["status"] != "done"]
    print(f"{len(rows) - len(failed)} of {len(rows)} pairs compared; table in {args.output_dir / COMPARISONS_NAME}")
    for row in rows:
        if row["status"] == "done":
            print(f"{row['pair_id']}: {row['category']}")
    if failed:
        print(f"Failed: {', '.join(failed)} (reasons in {COMPARISONS_NAME})", file=sys.stderr)
    return 1 if failed else 0


def run_models(args: argparse.Namespace) -> int:
    from ..choices import AUTO, ENSEMBLE
    from ..engine.auto_choice import describe, usable_choices
    from ..engine.catalogue import Catalogue, build_network
    from ..errors import ModelError

    catalogue = Catalogue.load(args.catalogue)
    if not catalogue.entries:
        print("No trained model is installed yet.")
    broken = []
    for name in catalogue.names():
        entry = catalogue.entries[name]
        print(f"{name:12s} {entry.task:13s} network={entry.network} modalities={','.join(entry.modalities)} "
              f"{entry.details.get('metrics', '')}")
        if entry.details.get("notes"):
            print(f"{'':12s} note: {entry.details['notes']}")
        try:
            build_network(entry)  # the entry's config fits its network (weights are checked when it runs)
        except ModelError as error:
            print(f"{'':12s} BROKEN: {error}")
            broken.append(name)
    if broken:
        print(f"ERROR: {len(broken)} broken catalogue entr{'y' if len(broken) == 1 else 'ies'}: "
              f"{', '.join(broken)} (see above).", file=sys.stderr)
    if ENSEMBLE in catalogue.segmentation_choices():
        print(f"{ENSEMBLE:12s} {'segmentation':13s} mean of --members (default: "
              f"{','.join(catalogue.default_ensemble())})")
    try:
        choices = usable_choices(catalogue)
    except ModelError:
        return 1 if broken else 0
    print(f"{AUTO:12s} {'segmentation':13s} per case the most accurate of these measured choices that runs on the "
          f"modalities present, within {catalogue.auto.cpu_seconds_limit:g} s per case on a CPU "
          f"({catalogue.auto.hardware}):")
    for choice in sorted(choices, key=lambda choice: -choice.mean_dice):
        print(f"{'':12s}   {describe(choice):55s} Dice " + " ".join(f"{k} {v:.3f}" for k, v in choice.dice.items())
              + f"  {choice.cpu_seconds:.1f} s")
    return 1 if broken else 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--"]:  # Slicer --python-script passes a separating "--" through
        argv = argv[1:]
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "segment" and args.num_parts < 1:
        parser.error(f"--num-parts must be 1 or more (got {args.num_parts}).")
    if args.command == "segment" and not 0 <= args.part_id < args.num_parts:
        parser.error(f"--part-id must be from 0 to {args.num_parts - 1} with --num-parts {args.num_parts} (got "
                     f"{args.part_id}).")
    if args.command == "compare" and bool(args.pairs) == bool(args.baseline and args.follow_up):
        parser.error("give either --baseline and --follow-up (one pair) or --pairs CSV (many pairs).")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    logging.getLogger("highdicom").setLevel(logging.WARNING)  # its INFO lines narrate every DICOM SEG it builds
    handlers = {"segment": run_segment, "predict": run_predict, "compare": run_compare, "models": run_models}
    # `predict` is the GUI's background process: whatever happens, its last line says how it ended.
    background = args.command == "predict"
    failure = None
    try:
        code = handlers[args.command](args)
    except Cancelled as error:
        print(f"Cancelled: {error}", file=sys.stderr)
        code, failure = 130, error
    except KeyboardInterrupt as error:  # Ctrl-C: one line, no traceback; write_atomically removed its temporary
        print("Interrupted: stopped without leaving a half-written file; finished cases are kept and skipped on the "
              "next run.", file=sys.stderr)
        code, failure = 130, error
    except BrainTumorFusionError as error:
        print(f"ERROR: {error}", file=sys.stderr)
        code, failure = 2, error
    except Exception as error:
        if not background:
            raise
        traceback.print_exc()
        code, failure = 1, error
    if background:
        print(format_result(failure), flush=True)
    return code

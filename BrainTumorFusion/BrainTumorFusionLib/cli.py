"""Command line: `segment` (batch over a folder), `predict` (one case, used by the GUI's background
process), `models` (list the catalogue)."""

import argparse
import json
import logging
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

from .catalogue import DEFAULT_GRADER, DEFAULT_MODEL
from .errors import BrainTumorFusionError, Cancelled
from .inference import PRECISIONS
from .modalities import MODALITIES
from .process_runner import format_progress, format_result

if TYPE_CHECKING:
    from .pipeline import Pipeline


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m BrainTumorFusionLib",
                                     description="Brain tumor segmentation and grading on T1, T1ce, T2 and FLAIR.")
    commands = parser.add_subparsers(dest="command", required=True)

    def add_model_options(command):
        command.add_argument("--model", default=DEFAULT_MODEL, help="segmentation model from the catalogue (default "
                             f"{DEFAULT_MODEL}), or 'ensemble' to average several")
        command.add_argument("--members", metavar="A,B,...",
                             help="with --model ensemble: comma-separated segmentation models to average (default: "
                             "every segmentation model of the catalogue; see the models command)")
        command.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
        command.add_argument("--precision", default="auto", choices=PRECISIONS,
                             help="auto (default): float16 on CUDA, bfloat16 on CPUs with native bfloat16 for models "
                             "whose catalogue entry allows it, else float32")
        command.add_argument("--grade", action="store_true", help="also grade the glioma (HGG vs LGG)")
        command.add_argument("--grading-model", default=DEFAULT_GRADER)
        command.add_argument("--catalogue", action="append", default=[], metavar="JSON",
                             help="extra model catalogue file (your own trained models); repeatable")

    segment = commands.add_parser("segment", help="segment every case folder of --input-dir")
    segment.add_argument("--input-dir", required=True, type=Path)
    segment.add_argument("--output-dir", required=True, type=Path)
    segment.add_argument("--overwrite", action="store_true", help="redo cases that are already finished")
    add_model_options(segment)

    predict = commands.add_parser("predict", help="segment one case given as files (PROGRESS lines on stdout, then "
                                  "a RESULT line: see process_runner)")
    for role in MODALITIES:
        predict.add_argument(f"--{role}", type=Path)
    predict.add_argument("--output-dir", required=True, type=Path)
    predict.add_argument("--name", default="case")
    add_model_options(predict)

    models = commands.add_parser("models", help="list the models of the catalogue")
    models.add_argument("--catalogue", action="append", default=[], metavar="JSON")
    return parser


def make_pipeline(args: argparse.Namespace) -> "Pipeline":
    from .catalogue import Catalogue
    from .pipeline import Pipeline

    return Pipeline(model=args.model, device=args.device, grade=args.grade, grading_model=args.grading_model,
                    catalogue=Catalogue.load(args.catalogue), members=args.members, precision=args.precision)


def run_segment(args: argparse.Namespace) -> int:
    from .batch import run_batch

    rows = run_batch(args.input_dir, args.output_dir, make_pipeline(args), overwrite=args.overwrite)
    failed = [row["case_id"] for row in rows if row["status"] != "done"]
    print(f"{len(rows) - len(failed)} of {len(rows)} cases done; summary in {args.output_dir / 'summary.csv'}")
    if failed:
        print(f"Failed: {', '.join(failed)} (reasons in summary.csv)", file=sys.stderr)
    return 1 if failed else 0


def run_predict(args: argparse.Namespace) -> int:
    """Writes labels.nrrd (on the reference input's grid) and result.json into --output-dir."""
    from .file_io import CaseFiles, check_writable_folder, read_case, write_atomically, write_labels

    files = {role: getattr(args, role) for role in MODALITIES if getattr(args, role) is not None}
    case, reference = read_case(CaseFiles(args.name, files))
    pipeline = make_pipeline(args)
    pipeline.check_modalities(case)  # input and model errors come before the output folder is made
    check_writable_folder(args.output_dir)
    result = pipeline.run(case, lambda fraction, message: print(format_progress(fraction, message), flush=True))
    write_labels(result.labels, reference, args.output_dir / "labels.nrrd")
    summary = {"case_name": result.case_name, "volumes_ml": result.volumes_ml,
               "grade_probabilities": result.grade_probabilities, "model": result.model, "device": result.device,
               "seconds": result.seconds, "warnings": result.warnings}
    write_atomically(lambda target: Path(target).write_text(json.dumps(summary, indent=1)),
                     args.output_dir / "result.json")
    return 0


def run_models(args: argparse.Namespace) -> int:
    from .catalogue import ENSEMBLE, Catalogue

    catalogue = Catalogue.load(args.catalogue)
    if not catalogue.entries:
        print("No trained model is installed yet.")
    for name in catalogue.names():
        entry = catalogue.entries[name]
        print(f"{name:12s} {entry.task:13s} network={entry.network} modalities={','.join(entry.modalities)} "
              f"{entry.details.get('metrics', '')}")
        if entry.details.get("notes"):
            print(f"{'':12s} note: {entry.details['notes']}")
    if ENSEMBLE in catalogue.segmentation_choices():
        print(f"{ENSEMBLE:12s} {'segmentation':13s} mean of --members (default: "
              f"{','.join(catalogue.default_ensemble())})")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--"]:  # Slicer --python-script passes a separating "--" through
        argv = argv[1:]
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    handlers = {"segment": run_segment, "predict": run_predict, "models": run_models}
    # `predict` is the GUI's background process: whatever happens, its last line says how it ended.
    background = args.command == "predict"
    failure = None
    try:
        code = handlers[args.command](args)
    except Cancelled as error:
        print(f"Cancelled: {error}", file=sys.stderr)
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

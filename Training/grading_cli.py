"""Command line of the grading recipe: python -m Training train-grader | evaluate-grader | export-grader."""

import argparse
from pathlib import Path

from BrainTumorFusionLib.engine.catalogue import SHIPPED_CATALOGUE

from .config import add_config_arguments, add_run_flags, config_from_args
from .grading import GradingConfig, train_grader
from .grading_evaluate import evaluate_grader, export_grader

COMMANDS = ("train-grader", "evaluate-grader", "export-grader")
S = argparse.SUPPRESS  # options left out keep the defaults (or, with --resume, the run's config.json)


def add_commands(commands):
    """Add the grading sub-commands to Training's sub-parsers."""
    train = commands.add_parser("train-grader", argument_default=S,
                                help="train the cmg glioma grader (stage 1 T1ce branch, stage 2 guided multi-modal)")
    add_config_arguments(train, GradingConfig)
    add_run_flags(train)

    evaluate = commands.add_parser("evaluate-grader", help="grade a split with the library pipeline; CSV + metrics")
    evaluate.add_argument("--checkpoint", required=True, type=Path, help="checkpoint file or run folder")
    evaluate.add_argument("--data-dir", required=True, type=Path)
    evaluate.add_argument("--split", default="validation", help="validation, train, all, or comma-separated ids")
    evaluate.add_argument("--labels-table", type=Path,
                          help="grades for --split all / ids (default <data-dir>/cases.csv)")
    evaluate.add_argument("--output", type=Path, help="CSV (default <run>/grading_<split>.csv; metrics next to it)")
    evaluate.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))

    export = commands.add_parser("export-grader", help="weights file + grading catalogue entry")
    export.add_argument("--checkpoint", required=True, type=Path, help="checkpoint file or run folder")
    export.add_argument("--name", required=True, help="catalogue name of the model (e.g. cmg)")
    export.add_argument("--catalogue", type=Path, help="catalogue JSON (default: the module's Resources/models.json)")
    export.add_argument("--title")
    export.add_argument("--metrics", type=Path, help="metrics JSON (default <run>/grading_validation.json)")
    export.add_argument("--notes", help="the entry's caveat (default: generated when a grade has few cases)")
    export.add_argument("--dtype", default="auto", choices=("auto", "float32", "float16"))
    export.add_argument("--size-limit-mb", type=float, default=50.0, help="auto: float16 above this (default 50)")
    export.add_argument("--data-description", help="what the training data was, for the entry")


def run(args):
    """Run a grading sub-command; returns the exit status."""
    if args.command == "train-grader":
        result = train_grader(config_from_args(GradingConfig, args), resume=getattr(args, "resume", False),
                              progress=not getattr(args, "quiet", False))
        weights = ", ".join(f"{g} {w:.4f}" for g, w in result["class_weights"].items())
        print(f"step {result['step']}; last checkpoint {result['last']}; class weights {weights}")
    elif args.command == "evaluate-grader":
        result = evaluate_grader(args.checkpoint, args.data_dir, args.split, args.output, args.device,
                                 args.labels_table)
        for row in result["rows"]:
            print(f"{row['case_id']}: {row['grade']}  p(HGG) {row['p_HGG']:.4f}  p(LGG) {row['p_LGG']:.4f}  "
                  f"-> {row['predicted']}")
        metrics = result["metrics"]
        shown = {k: metrics[k] for k in ("accuracy", "balanced_accuracy", "auc")}
        print(f"{metrics['cases']} cases {metrics['counts']} -> {result['csv']}")
        print("  ".join(f"{k} {'n/a (one grade only)' if v is None else f'{v:.4f}'}" for k, v in shown.items()))
    elif args.command == "export-grader":
        catalogue = args.catalogue or SHIPPED_CATALOGUE
        entry = export_grader(args.checkpoint, args.name, catalogue, args.title, args.metrics, args.dtype,
                              args.size_limit_mb, args.data_description, args.notes)
        print(f"Exported '{entry['name']}' ({entry['weights']['file']}, sha256 {entry['weights']['sha256'][:12]}...) "
              f"into {catalogue}")
        if entry.get("notes"):
            print(f"Note: {entry['notes']}")
    else:
        raise SystemExit(f"Unknown command {args.command}.")
    return 0

"""Command line: python -m Training prepare|train|pretrain|evaluate|export (see Training/README.md)."""

import argparse
import logging
import os
import sys
from pathlib import Path

from BrainTumorFusionLib.choices import TTA_MODES
from BrainTumorFusionLib.engine.catalogue import SHIPPED_CATALOGUE

from . import grading_cli
from .choose_auto import choose_auto
from .config import TrainConfig, add_config_arguments, add_run_flags, config_from_args, spacing_argument
from .data import discover, prepare_cache
from .evaluate import evaluate
from .export import export
from .pretraining import PretrainConfig, pretrain
from .segmentation import train
from .tune_cleanup import load_pairs, tune

S = argparse.SUPPRESS  # train options left out keep the defaults (or, with --resume, the run's config.json)


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m Training",
                                     description="Train, evaluate and export BrainTumorFusion segmentation networks.")
    commands = parser.add_subparsers(dest="command", required=True)

    prepare = commands.add_parser("prepare", help="prepare (normalise, resample) every labelled case into the cache")
    prepare.add_argument("--data-dir", required=True, type=Path, help="folder with one sub-folder per case")
    prepare.add_argument("--cache-dir", required=True, type=Path)
    prepare.add_argument("--spacing", nargs="+", default=["2"], help="mm: one value, I J K, or 'native' (default 2)")
    prepare.add_argument("--workers", type=int, default=1, help="processes (default 1)")
    prepare.add_argument("--overwrite", action="store_true")

    train = commands.add_parser("train", help="train a network (single process, or every rank under torchrun)",
                                argument_default=S)
    add_config_arguments(train, TrainConfig)
    add_run_flags(train)

    pretrain = commands.add_parser("pretrain", help="SwinFUSE self-supervised pretraining (single-modality views)",
                                   argument_default=S)
    add_config_arguments(pretrain, PretrainConfig)
    add_run_flags(pretrain)

    evaluate = commands.add_parser("evaluate", help="segment a split with the library pipeline; Dice/HD95 CSV")
    evaluated = evaluate.add_mutually_exclusive_group(required=True)
    evaluated.add_argument("--checkpoint", type=Path, help="checkpoint file or run folder")
    evaluated.add_argument("--model", help="a catalogue model instead (e.g. ensemble), on its recorded split")
    evaluate.add_argument("--members", help="with --model ensemble: comma-separated models (default: all)")
    evaluate.add_argument("--data-dir", required=True, type=Path)
    evaluate.add_argument("--split", default="validation", help="validation, train, all, or comma-separated ids")
    evaluate.add_argument("--output", type=Path, help="CSV (default <run>/evaluation_<split>.csv)")
    evaluate.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    evaluate.add_argument("--precision", default="fp32", choices=("auto", "fp32", "bf16", "fp16"),
                          help="inference precision (default fp32: scores that do not depend on the CPU)")
    evaluate.add_argument("--tta", default="off", choices=TTA_MODES,
                          help="test-time augmentation: off (default) or mirror (the mean over mirrored passes)")
    evaluate.add_argument("--drop-modalities", default="", help="e.g. t1,t2: evaluate without these")
    evaluate.add_argument("--save-predictions", type=Path, help="also write <case>_seg.nii.gz here")
    evaluate.add_argument("--save-probabilities", type=Path,
                          help="also write <case>.npz here: the region probabilities on the brain crop (uint8, x/255) "
                               "and the crop, for scoring ensembles and clean-ups later (out-of-fold predictions)")
    evaluate.add_argument("--window", default="patch", choices=("patch", "whole"),
                          help="with --checkpoint: patch-sized sliding windows, or one window over the whole brain "
                               "crop (fully convolutional networks)")

    cleanup = commands.add_parser("tune-cleanup", help="choose the BraTS clean-up volumes on saved predictions")
    cleanup.add_argument("--predictions", required=True, type=Path, help="folder of <case>_seg.nii.gz (evaluate "
                         "--save-predictions)")
    cleanup.add_argument("--data-dir", required=True, type=Path, help="the cases with their ground truth")

    auto = commands.add_parser("choose-auto", help="measure every combination of the catalogue's segmentation models "
                               "on the validation cases and write the catalogue's 'auto' table")
    auto.add_argument("--data-dir", required=True, type=Path)
    auto.add_argument("--catalogue", type=Path, help="catalogue JSON (default: the module's Resources/models.json)")
    auto.add_argument("--output", type=Path, help="also write the table as CSV here")
    auto.add_argument("--keep-seconds", action="store_true", help="keep each choice's seconds from the current table "
                      "(same weights) instead of timing it here: re-measure Dice and clean-up on another machine")
    auto.add_argument("--timed-catalogue", type=Path, help="with --keep-seconds: the catalogue JSON whose table "
                      "timed the seconds (e.g. the one before a model was retrained); a retrained model keeps them "
                      "when its network, configuration, grid, window and CPU precision are unchanged")

    export = commands.add_parser("export", help="weights file + catalogue entry")
    export.add_argument("--checkpoint", required=True, type=Path, help="checkpoint file or run folder (best.pt)")
    export.add_argument("--name", required=True, help="catalogue name of the model")
    export.add_argument("--catalogue", type=Path, help="catalogue JSON (default: the module's Resources/models.json)")
    export.add_argument("--title")
    export.add_argument("--metrics", type=Path, help="evaluation CSV (default <run>/evaluation_validation.csv)")
    export.add_argument("--dtype", default="auto", choices=("auto", "float32", "float16"))
    export.add_argument("--size-limit-mb", type=float, default=50.0, help="auto: float16 above this (default 50)")
    export.add_argument("--data-description", help="what the training data was, for the entry")
    export.add_argument("--window", default="patch", choices=("patch", "whole"),
                        help="the inference window the entry records (measure both with evaluate --window)")

    grading_cli.add_commands(commands)  # train-grader, evaluate-grader, export-grader
    return parser


def train_config(args):
    """TrainConfig from the options (see config_from_args): a cache, and the cases' folder or a split file to train
    from that cache alone (a machine that got only the prepared cache, e.g. a GPU machine)."""
    config = config_from_args(TrainConfig, args)
    if not config.cache_dir or not (config.data_dir or config.split_file):
        raise SystemExit("train needs --cache-dir and --data-dir, or --cache-dir and --split-file to train from an "
                         "already prepared cache (or --resume with a run whose config.json has them).")
    return config


def main(argv=None):
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "prepare":
        cases = discover(args.data_dir)
        paths = prepare_cache(cases, args.cache_dir, spacing_argument(args.spacing), args.workers, args.overwrite)
        print(f"{len(paths)} cases prepared in {Path(args.cache_dir)}")
    elif args.command == "train":
        result = train(train_config(args), resume=getattr(args, "resume", False),
                       progress=not getattr(args, "quiet", False))
        if int(os.environ.get("RANK", "0")) == 0:
            best = result["best"] and f"; best {result['best']} (mean Dice {result['best_metric']['metric']:.4f})"
            print(f"step {result['step']}; last checkpoint {result['last']}{best or ''}")
    elif args.command == "pretrain":
        config = config_from_args(PretrainConfig, args)
        if not (config.data_dir and config.cache_dir and config.split_file):
            raise SystemExit("pretrain needs --data-dir, --cache-dir and --split-file (its training cases are the "
                             "data), or --resume with a run whose config.json has them.")
        result = pretrain(config, resume=getattr(args, "resume", False), progress=not getattr(args, "quiet", False))
        print(f"step {result['step']}; last checkpoint {result['last']}")
    elif args.command == "evaluate":
        drop = tuple(m for m in args.drop_modalities.split(",") if m)
        result = evaluate(args.checkpoint, args.data_dir, args.split, args.output, args.device, drop,
                          args.save_predictions, model=args.model, members=args.members, precision=args.precision,
                          window=args.window, tta=args.tta, probabilities_dir=args.save_probabilities)
        means = result["means"]
        print(f"{len(result['rows'])} cases -> {result['csv']}")
        print("mean " + "  ".join(f"{k} {v:.4f}" for k, v in means.items()))
    elif args.command == "tune-cleanup":
        tune(load_pairs(args.predictions, args.data_dir))
    elif args.command == "choose-auto":
        rows = choose_auto(args.data_dir, args.catalogue or SHIPPED_CATALOGUE, args.output,
                           keep_seconds=args.keep_seconds, timed_catalogue=args.timed_catalogue)
        for row in rows:
            print(f"{'+'.join(row['members']):45s} " + " ".join(f"{k} {v:.4f}" for k, v in row["dice"].items())
                  + f"  worst WT {row['worst_wt']:.4f}  {row['cpu_seconds']:.2f} s"
                  + (f"  clean-up {row['cleanup']}" if row["cleanup"] else ""))
    elif args.command == "export":
        entry = export(args.checkpoint, args.name, args.catalogue or SHIPPED_CATALOGUE, args.title, args.metrics,
                       args.dtype, args.size_limit_mb, args.data_description, args.window)
        print(f"Exported '{entry['name']}' ({entry['weights']['file']}, sha256 {entry['weights']['sha256'][:12]}...) "
              f"into {args.catalogue or SHIPPED_CATALOGUE}")
    else:
        return grading_cli.run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())

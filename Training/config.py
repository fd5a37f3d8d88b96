"""Run configurations: one dataclass per kind of run, recorded in every checkpoint and in run/config.json, and
the command-line options turned into one.

`RunConfig` holds what the shared loop (Training.loop) reads; `TrainConfig` adds supervised segmentation, and the
pretraining and grading recipes add theirs (Training.pretraining.PretrainConfig, Training.grading.GradingConfig).
Defaults give a compact CPU run (compact network preset, 2 mm spacing, 64^3 patches, batch 2). For a full GPU
run see Training/README.md (e.g. --paper-size --spacing 1 1 1 --patch-size 128 128 128 --steps 100000).
"""

import argparse
import json
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable, Optional


def option(default=MISSING, help: str = "", factory: Optional[Callable] = None, **argparse_extra):
    """A configuration field with its command-line help and argparse details (nargs, choices, metavar, `parse`:
    the type that parses each value): the command line is generated from the fields (add_config_arguments)."""
    metadata = {"help": help, "argparse": argparse_extra}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


# Fields that may change when a run is resumed (where and how fast it runs, how long); the others define the run.
RUNTIME_FIELDS = frozenset({"data_dir", "cache_dir", "steps", "checkpoint_every", "validate_every", "workers",
                            "threads", "device", "log_every", "max_cached_cases"})


@dataclass
class RunConfig:
    """What every run has; the loop reads only these fields."""

    network: str = option("hafb",
                          "the network to train (one of the library's registry with a recipe in "
                          "Training.network_recipes)")
    network_config: Optional[dict] = option(None, "None = the network's compact preset (Training.network_recipes)",
                                            parse=json.loads, metavar="JSON")
    data_dir: str = option("",
                           "folder with one sub-folder per case (BraTS naming, `_seg` labels); leave it out to train "
                           "from a prepared --cache-dir with --split-file")
    cache_dir: str = option("", 'prepared-case cache (made on first use)')
    run_dir: str = option("runs/hafb", 'checkpoints, split.json, config.json, metrics.jsonl, tensorboard/')
    spacing: Optional[list] = option(help="mm (I, J, K); None = native",
                                     factory=lambda: [2.0, 2.0, 2.0], nargs="+", metavar="MM")
    patch_size: list = option(help='(D, H, W) voxels', factory=lambda: [64, 64, 64], nargs=3, parse=int)
    batch_size: int = option(2, 'per process')
    lr: float = option(3e-4, 'AdamW learning rate')
    weight_decay: float = option(1e-5, 'AdamW weight decay')
    schedule: str = option("poly",
                           "poly | cosine | constant, over each stage's steps", choices=("poly", "cosine", "constant"))
    warmup_steps: int = option(0, 'steps of linear warm-up at the start of each stage')
    poly_power: float = option(0.9, 'exponent of the poly schedule')
    grad_clip: float = option(1.0, 'max gradient norm; 0 = no clipping')
    init_from: Optional[str] = option(None, 'checkpoint whose weights start the run (e.g. SwinFUSE pretraining)')
    checkpoint_every: int = option(200, 'steps between checkpoints')
    validate_every: int = option(500, 'steps; validation also runs at the end of each stage; 0 = never')
    amp: str = option("auto",
                      "auto: bf16 where supported (CUDA else fp16; CPUs with native bf16 else fp32) | bf16 | fp16 | "
                      "none", choices=("auto", "bf16", "fp16", "none"))
    channels_last: bool = option(True, 'channels-last-3d memory layout of the network and the batches')
    seed: int = option(0, 'seed of every random stream')
    deterministic: bool = option(False, 'deterministic torch algorithms (slower)')
    threads: int = option(0, "torch CPU threads per rank; 0 = leave torch's default")
    device: str = option("auto",
                         "where to train: auto (CUDA when there is a GPU), cpu or cuda",
                         choices=("auto", "cpu", "cuda"))
    log_every: int = option(10, 'steps between metrics.jsonl / TensorBoard records')

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "RunConfig":
        """The configuration of a checkpoint or config.json (fields a newer version removed are ignored)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def resumed(self, stored: dict) -> tuple:
        """The stored configuration of the run being resumed, with this call's runtime fields; returns it and
        the names of the other fields that were given differently (ignored)."""
        stored_config = type(self).from_dict(stored)
        changed = [f for f, v in self.to_dict().items()
                   if f not in RUNTIME_FIELDS and f != "network_config" and v != getattr(stored_config, f)]
        runtime = {f: getattr(self, f) for f in RUNTIME_FIELDS if hasattr(self, f)}
        return type(self).from_dict({**stored_config.to_dict(), **runtime}), changed


@dataclass
class TrainConfig(RunConfig):
    """Supervised segmentation (Training.segmentation)."""

    groups_table: Optional[str] = option(None, 'CSV with case_id and source_group; default <data_dir>/cases.csv')
    split_file: Optional[str] = option(None, 'an existing split to use; default <run_dir>/split.json (made if absent)')
    val_fraction: float = option(0.2, 'share of the cases that validate (stratified by source group)')
    folds: Optional[int] = option(None, 'cross-validation: the validation cases are fold `fold` (0-based) of this many')
    fold: int = option(0, 'with --folds: the validation fold, 0-based')
    steps: int = option(2000, 'optimizer steps in total')
    dice_weight: float = option(1.0, 'alpha')
    bce_weight: float = option(0.5, 'beta')
    modality_dropout: Optional[bool] = option(None, 'None = on for networks that handle missing modalities (hafb)')
    max_dropped: int = option(2, 'most modalities dropped from one sample')
    dropout_rate: float = option(0.5, 'share of samples that lose 1..max_dropped modalities')
    dropout_weights: list = option(help="relative, MODALITIES order",
                                   factory=lambda: [1.0, 0.5, 1.0, 1.0], nargs=4, parse=float)
    intensity_augmentation: str = option("scanner",
                                         "basic (scale, shift) | scanner (+ bias field, gamma, blur, noise)",
                                         choices=("basic", "scanner"))
    core_crops: float = option(0.25, 'share of crops centred on WT, TC or ET (uniform over the three)')
    core_case_repeats: int = option(2, 'times per pass a case with a large necrotic / non-enhancing core is shown')
    ssl_weight: Optional[float] = option(None, "weight of the network's auxiliary term; None = its recipe's")
    ssl_cube_mm: float = option(20.0, "side of the zeroed cube of hafb's masked-region consistency (mm)")
    pos_neg: list = option(help='tumor : brain crop-centre ratio', factory=lambda: [2.0, 1.0], nargs=2, parse=float)
    val_overlap: float = option(0.5, 'sliding-window overlap of the validation')
    workers: int = option(2, 'DataLoader workers per rank')
    max_cached_cases: int = option(32, 'prepared cases kept in memory per DataLoader worker (float16)')
    find_unused_parameters: Optional[bool] = option(None, "DDP; None = the network recipe's")


def add_config_arguments(parser: argparse.ArgumentParser, config_class: type, skip=()) -> None:
    """One option per field of `config_class`: --name-with-dashes, its type from the annotation (flags for booleans,
    --no-... to turn one off), help from the field (the first class in the hierarchy that gives one) and the default
    from config_class itself. The parser should use argument_default=SUPPRESS, so that options left out keep the
    defaults (or, with --resume, the run's config.json: config_from_args)."""
    hints = typing.get_type_hints(config_class)
    defaults = config_class()
    for item in fields(config_class):
        if item.name in skip:
            continue
        text, extra = described(config_class, item.name)
        kind = hints[item.name]
        kind = next((k for k in typing.get_args(kind) if k is not type(None)), kind)  # Optional[X] -> X
        default = getattr(defaults, item.name)
        text = (f"{text} (default {default})" if text else f"default {default}").replace("%", "%%")
        flag = "--" + item.name.replace("_", "-")
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, help=text)
            continue
        parse = extra.pop("parse", None)
        if kind is list and "nargs" not in extra:
            extra["nargs"] = "+"
        parser.add_argument(flag, type=parse or (None if kind in (list, dict) else kind), help=text, **extra)


def add_run_flags(command):
    """The options of a training command that are not fields of its configuration."""
    command.add_argument("--paper-size", action="store_true", help="the library's paper-sized network (config {})")
    command.add_argument("--resume", action="store_true", help="continue the run of --run-dir from its last checkpoint")
    command.add_argument("--quiet", action="store_true", help="no progress bar")


def described(config_class: type, name: str) -> tuple:
    """(help, argparse details) of a field, each from the first class of the hierarchy that gives it: a subclass
    that only changes a default keeps its parent's words and choices."""
    text, extra = "", {}
    for cls in config_class.__mro__:
        declared = getattr(cls, "__dataclass_fields__", {}).get(name)
        if declared is not None:
            text = text or declared.metadata.get("help", "")
            extra = extra or dict(declared.metadata.get("argparse", {}))
    return text, extra


def spacing_argument(values: Optional[list]) -> Optional[list]:
    """--spacing: one value, three values (I J K, mm) or 'native' (None)."""
    if values in (None, ["native"]):
        return None
    if len(values) == 1:
        values = values * 3
    if len(values) != 3:
        raise SystemExit("--spacing takes one value, three values (I J K, mm) or 'native'.")
    return [float(v) for v in values]


def config_from_args(config_class: type, args) -> RunConfig:
    """A run configuration: its defaults, then the run's config.json when resuming, then the options given (paths
    as strings, --spacing parsed, --paper-size = config {})."""
    given = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
             if k not in ("command", "resume", "quiet", "paper_size")}
    base = config_class().to_dict()
    run_dir = Path(given.get("run_dir", base["run_dir"]))
    if getattr(args, "resume", False) and (run_dir / "config.json").is_file():
        base.update(json.loads((run_dir / "config.json").read_text()))
    if "spacing" in given:
        given["spacing"] = spacing_argument(given["spacing"])
    if getattr(args, "paper_size", False):
        given["network_config"] = {}
    if "network" in given and "network_config" not in given and given["network"] != base["network"]:
        base["network_config"] = None  # another network: its own preset
    base.update(given)
    return config_class.from_dict(base)

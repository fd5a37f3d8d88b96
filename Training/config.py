"""Run configurations: one dataclass per kind of run, recorded in every checkpoint and in run/config.json, and
the command-line options turned into one.

`RunConfig` holds what the shared loop (Training.loop) reads; `TrainConfig` adds supervised segmentation, and the
pretraining and grading recipes add theirs (Training.pretraining.PretrainConfig, Training.grading.GradingConfig).
Defaults give a compact CPU run (compact network preset, 2 mm spacing, 64^3 patches, batch 2). For a full GPU
run see Training/README.md (e.g. --paper-size --spacing 1 1 1 --patch-size 128 128 128 --steps 100000).
"""

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Optional

# Fields that may change when a run is resumed (where and how fast it runs, how long); the others define the run.
RUNTIME_FIELDS = frozenset({"data_dir", "cache_dir", "steps", "checkpoint_every", "validate_every", "workers",
                            "threads", "device", "log_every", "max_cached_cases"})


@dataclass
class RunConfig:
    """What every run has; the loop reads only these fields."""

    network: str = "hafb"
    network_config: Optional[dict] = None  # None = the network's compact preset (Training.network_recipes)
    data_dir: str = ""
    cache_dir: str = ""
    run_dir: str = "runs/hafb"
    spacing: Optional[list] = field(default_factory=lambda: [2.0, 2.0, 2.0])  # mm (I, J, K); None = native
    patch_size: list = field(default_factory=lambda: [64, 64, 64])  # (D, H, W) voxels
    batch_size: int = 2
    lr: float = 3e-4
    weight_decay: float = 1e-5
    schedule: str = "poly"  # poly | cosine | constant, over each stage's steps
    warmup_steps: int = 0
    poly_power: float = 0.9
    grad_clip: float = 1.0  # max gradient norm; 0 = no clipping
    init_from: Optional[str] = None  # checkpoint whose weights start the run (e.g. SwinFUSE pretraining)
    checkpoint_every: int = 200
    validate_every: int = 500  # steps; validation also runs at the end of each stage; 0 = never
    amp: str = "auto"  # auto: bf16 where supported (CUDA else fp16; CPUs with native bf16 else fp32) | bf16 | fp16 | none
    channels_last: bool = True  # channels-last-3d memory layout of the network and the batches
    seed: int = 0
    deterministic: bool = False
    threads: int = 0  # torch CPU threads per rank; 0 = leave torch's default
    device: str = "auto"
    log_every: int = 10

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

    groups_table: Optional[str] = None  # CSV with case_id and source_group; default <data_dir>/cases.csv
    split_file: Optional[str] = None  # an existing split to use; default <run_dir>/split.json (made if absent)
    val_fraction: float = 0.2
    folds: Optional[int] = None  # cross-validation: the validation cases are fold `fold` (0-based) of this many
    fold: int = 0
    steps: int = 2000
    dice_weight: float = 1.0  # alpha
    bce_weight: float = 0.5  # beta
    modality_dropout: Optional[bool] = None  # None = on for networks that handle missing modalities (hafb)
    max_dropped: int = 2
    dropout_rate: float = 0.5  # share of samples that lose 1..max_dropped modalities
    dropout_weights: list = field(default_factory=lambda: [1.0, 0.5, 1.0, 1.0])  # relative, MODALITIES order
    intensity_augmentation: str = "scanner"  # basic (scale, shift) | scanner (+ bias field, gamma, blur, noise)
    core_crops: float = 0.25  # share of crops centred on WT, TC or ET (uniform over the three)
    core_case_repeats: int = 2  # times per pass a case with a large necrotic / non-enhancing core is shown
    ssl_weight: Optional[float] = None  # weight of the network's auxiliary term; None = its recipe's
    ssl_cube_mm: float = 20.0
    pos_neg: list = field(default_factory=lambda: [2.0, 1.0])  # tumor : brain crop-centre ratio
    val_overlap: float = 0.5
    workers: int = 2  # DataLoader workers per rank
    max_cached_cases: int = 32  # prepared cases kept in memory per DataLoader worker (float16)
    find_unused_parameters: Optional[bool] = None  # DDP; None = the network recipe's


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

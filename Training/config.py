"""The configuration of a training run: one dataclass, recorded in every checkpoint and in run/config.json.

Defaults give a compact CPU run (compact network preset, 2 mm spacing, 64^3 patches, batch 2). For a full GPU
run see Training/README.md (e.g. --paper-size --spacing 1 1 1 --patch-size 128 128 128 --steps 100000).
"""

from dataclasses import asdict, dataclass, field, fields
from typing import Optional


class RecordedConfig:
    """to_dict / from_dict of a run configuration dataclass (checkpoints and config.json hold the dict; fields a
    newer version removed are ignored when reading)."""

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, data):
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class TrainConfig(RecordedConfig):
    network: str = "hafb"
    network_config: Optional[dict] = None  # None = the network's compact preset (Training.models.COMPACT)
    data_dir: str = ""
    cache_dir: str = ""
    run_dir: str = "runs/hafb"
    groups_table: Optional[str] = None  # CSV with case_id and source_group; default <data_dir>/cases.csv
    split_file: Optional[str] = None  # an existing split to use; default <run_dir>/split.json (made if absent)
    val_fraction: float = 0.2
    spacing: Optional[list] = field(default_factory=lambda: [2.0, 2.0, 2.0])  # mm (I, J, K); None = native
    patch_size: list = field(default_factory=lambda: [64, 64, 64])  # (D, H, W) voxels
    batch_size: int = 2
    steps: int = 2000
    lr: float = 3e-4
    weight_decay: float = 1e-5
    schedule: str = "poly"  # poly | cosine | constant
    warmup_steps: int = 0
    poly_power: float = 0.9
    grad_clip: float = 1.0  # max gradient norm; 0 = no clipping
    dice_weight: float = 1.0  # alpha
    bce_weight: float = 0.5  # beta
    modality_dropout: Optional[bool] = None  # None = on for networks that handle missing modalities (hafb)
    max_dropped: int = 2
    ssl_weight: Optional[float] = None  # weight of the network's auxiliary term; None = the recipe's
    # (Training.losses.DEFAULT_AUX_WEIGHTS: hafb masked-cube consistency 0.1, missu self-distillation 0.3)
    ssl_cube_mm: float = 20.0
    init_from: Optional[str] = None  # checkpoint whose weights start the run (e.g. SwinFUSE pretraining)
    pos_neg: list = field(default_factory=lambda: [2.0, 1.0])  # tumor : brain crop-centre ratio
    checkpoint_every: int = 200
    validate_every: int = 500  # 0 = never
    val_overlap: float = 0.5
    amp: str = "auto"  # auto (bf16 if supported else fp16, CUDA only) | bf16 | fp16 | none
    channels_last: bool = True  # CUDA only
    seed: int = 0
    deterministic: bool = False
    workers: int = 2  # DataLoader workers per rank
    max_cached_cases: int = 32  # prepared cases kept in memory per DataLoader worker (float16)
    threads: int = 0  # torch CPU threads per rank; 0 = leave torch's default
    device: str = "auto"
    log_every: int = 10
    find_unused_parameters: Optional[bool] = None  # DDP; None = only for swinfuse (SSL heads unused)

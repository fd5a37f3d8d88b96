"""What training needs to know about each network, said once: one `NetworkRecipe` per network of the library's
zoo. Adding a network = one network file in the library + one entry in RECIPES.
"""

import inspect
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from BrainTumorFusionLib.networks.registry import network_class

from .losses import hafb_masked_consistency, hafb_masked_view, missu_self_distillation


@dataclass(frozen=True)
class NetworkRecipe:
    compact: dict  # the compact preset for CPU runs and tests (the library's defaults are the paper sizes)
    aux_term: Optional[Callable] = None  # (aux, n_clean) -> scalar tensor (Training.losses)
    aux_weight: float = 0.0  # default weight of aux_term
    aux_description: str = ""  # for the catalogue entry's loss description
    masked_view: Optional[Callable] = None  # (network, aux, masked input) -> aux; needs a masked copy of the batch
    deep_supervision: bool = False  # the Dice + BCE term covers the weighted heads of the aux output
    handles_missing_modalities: bool = False  # forward takes the (B, 4) present mask; modality dropout by default
    find_unused_parameters: bool = False  # DDP: some parameters get no gradient in supervised training
    pretrainable: bool = False  # has `pretrain_forward` (self-supervised pretraining, Training.pretraining)
    trains_faster_in_cpu_bf16: bool = False  # --amp auto trains in bf16 on CPUs with native bf16 (measured faster, finite gradients)
    notes: dict = field(default_factory=dict)  # extra catalogue `training` fields


RECIPES = {
    "hafb": NetworkRecipe(
        # Instance norm: batch statistics mixed over modality-dropout patterns cost the BatchNorm model its
        # four-modality accuracy (networks/hafb.py).
        compact={"widths": [8, 16, 32, 64, 128], "norm": ["instance", {"affine": True}], "fusion_norm": "instance"},
        aux_term=hafb_masked_consistency, aux_weight=0.1,
        aux_description="masked-cube consistency", masked_view=hafb_masked_view, handles_missing_modalities=True,
        trains_faster_in_cpu_bf16=True),
    "missu": NetworkRecipe(
        compact={"widths": [8, 16, 32, 64], "hidden_size": 64, "num_heads": 4, "mlp_dim": 128, "num_layers": 2},
        aux_term=missu_self_distillation, aux_weight=0.3,
        aux_description="self-distillation (attention maps, fused branch not detached)", trains_faster_in_cpu_bf16=True),
    "transfuse": NetworkRecipe(
        compact={"cnn_widths": [16, 32, 64], "cnn_blocks": [1, 1, 1], "vit_hidden_size": 64, "vit_depth": 2,
                 "vit_heads": 4, "vit_mlp_dim": 128},
        deep_supervision=True, notes={"deep_supervision": "0.5 / 0.3 / 0.2 over the three heads"}),
    # Its SSL heads take no part in supervised training.
    "swinfuse": NetworkRecipe(compact={"feature_size": 12, "depths": [1, 1, 1, 1], "window_size": 4},
                              find_unused_parameters=True, pretrainable=True),
    "segresnet": NetworkRecipe(compact={"init_filters": 8}),
    "cmg": NetworkRecipe(compact={"widths": [8, 16, 32, 64], "blocks": [1, 1, 1, 1]}),  # grading
}


def recipe_of(name: str) -> NetworkRecipe:
    """The recipe of network `name`; a network registered in the library at run time (networks.register) without
    one trains with a plain recipe (no auxiliary term, its default configuration)."""
    network_class(name)  # KeyError naming the library's networks when it is not one
    return RECIPES.get(name, NetworkRecipe(compact={}))


def resolve_config(name: str, config: Optional[dict] = None, patch_size=None) -> dict:
    """The configuration a run records: `config` (None = the compact preset) with img_size set to the patch
    size for networks that have one and were not given it. JSON-friendly (lists, not tuples)."""
    resolved = dict(recipe_of(name).compact if config is None else config)
    arguments = inspect.signature(network_class(name).__init__).parameters
    if patch_size is not None and "img_size" in arguments and "img_size" not in resolved:
        resolved["img_size"] = [int(s) for s in patch_size]
    return {k: list(v) if isinstance(v, tuple) else v for k, v in resolved.items()}


def build_network(name: str, config: dict) -> torch.nn.Module:
    """Instantiate network `name` with `config` (as recorded in checkpoints and catalogue entries)."""
    return network_class(name)(**config)


def aux_weight(config) -> float:
    """The weight of a segmentation run's auxiliary term: --ssl-weight when given, else its recipe's; 0 when the
    network has no term."""
    recipe = recipe_of(config.network)
    if recipe.aux_term is None:
        return 0.0
    return recipe.aux_weight if config.ssl_weight is None else float(config.ssl_weight)


def uses_modality_dropout(config) -> bool:
    """Whether a segmentation run (TrainConfig) drops modalities, i.e. whether its model handles missing ones."""
    takes_mask = recipe_of(config.network).handles_missing_modalities
    if config.modality_dropout is None:
        return takes_mask
    if config.modality_dropout and not takes_mask:
        raise ValueError(f"Modality dropout needs a network that takes the modality mask; '{config.network}' "
                         "does not. Leave --modality-dropout out.")
    return bool(config.modality_dropout)

"""Networks for training: the library's zoo (`networks.build`, which includes the SegResNet baseline)."""

import inspect

import torch


SEGRESNET = "segresnet"

# Compact variants for CPU runs and tests (the library's defaults are the paper sizes). `img_size` of the
# transformer networks is filled in from the patch size when not given.
COMPACT = {
    "hafb": {"widths": [8, 16, 32, 64, 128]},
    "missu": {"widths": [8, 16, 32, 64], "hidden_size": 64, "num_heads": 4, "mlp_dim": 128, "num_layers": 2},
    "transfuse": {"cnn_widths": [16, 32, 64], "cnn_blocks": [1, 1, 1], "vit_hidden_size": 64, "vit_depth": 2,
                  "vit_heads": 4, "vit_mlp_dim": 128},
    "swinfuse": {"feature_size": 12, "depths": [1, 1, 1, 1], "window_size": 4},
    SEGRESNET: {"init_filters": 8},
    "cmg": {"widths": [8, 16, 32, 64], "blocks": [1, 1, 1, 1]},  # grading (Training/grading.py)
}
# Networks that take the (B, 4) present mask and are trained with modality dropout by default.
MISSING_MODALITY_NETWORKS = {"hafb"}


def network_factory(name):
    """The class building network `name` (KeyError naming the available ones)."""
    from BrainTumorFusionLib.networks.registry import network_class

    return network_class(name)


def accepted_arguments(name):
    factory = network_factory(name)
    return set(inspect.signature(factory.__init__).parameters) - {"self"}


def resolve_config(name, config=None, patch_size=None):
    """The configuration a run records: `config` (None = the compact preset) with img_size set to the patch
    size for networks that have one and were not given it. JSON-friendly (lists, not tuples)."""
    resolved = dict(COMPACT.get(name, {}) if config is None else config)
    if patch_size is not None and "img_size" in accepted_arguments(name) and "img_size" not in resolved:
        resolved["img_size"] = [int(s) for s in patch_size]
    return {k: list(v) if isinstance(v, tuple) else v for k, v in resolved.items()}


def build_network(name, config):
    """Instantiate network `name` with `config` (as recorded in checkpoints and catalogue entries)."""
    return network_factory(name)(**config)


def takes_present(name):
    return name in MISSING_MODALITY_NETWORKS


def run_network(network, x, present=None):
    """Forward pass; returns (logits, aux) (aux None when the network gives only logits)."""
    out = network(x) if present is None else network(x, present)
    if isinstance(out, (tuple, list)):
        return out[0], out[1]
    return out, None


def parameter_count(network):
    return sum(p.numel() for p in network.parameters())


def unwrap(network):
    """The plain module inside DistributedDataParallel (or the module itself)."""
    return network.module if isinstance(network, torch.nn.parallel.DistributedDataParallel) else network

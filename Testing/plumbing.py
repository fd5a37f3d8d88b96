"""Small deterministic stand-ins for trained networks, for plumbing tests only (never shipped)."""

import json

import torch

from BrainTumorFusionLib import networks
from BrainTumorFusionLib.engine.catalogue import file_sha256
from BrainTumorFusionLib.engine.pipeline import Model


class IntensityNet(torch.nn.Module):
    """Region logits from normalised intensities: WT where FLAIR is bright, TC/ET where T1ce is bright.

    Deterministic, shape-preserving, with parameters so it has a state dict like a real network.
    """

    def __init__(self, scale: float = 4.0):
        super().__init__()
        self.offsets = torch.nn.Parameter(torch.tensor([1.0, 1.5, 2.0]))
        self.scale = scale

    def forward(self, x, present=None):
        flair, t1ce = x[:, 3:4], x[:, 1:2]
        logits = torch.cat([flair - self.offsets[0], t1ce - self.offsets[1], t1ce - self.offsets[2]], dim=1)
        return logits * self.scale


class ConstantGrader(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.logits = torch.nn.Parameter(torch.tensor([1.0, -1.0]))

    def forward(self, x, present=None):
        return self.logits.expand(x.shape[0], 2)


networks.register("intensity", IntensityNet)
networks.register("constant_grader", ConstantGrader, task="grading")


def intensity_model(patch_size=(64, 64, 64), spacing_mm=None, handles_missing=False):
    return Model(name="intensity", network=IntensityNet().eval(), patch_size=patch_size, spacing_mm=spacing_mm,
                 handles_missing_modalities=handles_missing)


def write_catalogue(folder, network_name, state_dict, name=None, task="segmentation", config=None, **fields):
    """Save weights + a catalogue JSON in folder; returns the catalogue path."""
    name = name or network_name
    weights = folder / f"{name}.pt"
    torch.save(state_dict, weights)
    entry = {"name": name, "task": task, "network": network_name, "config": config or {},
             "weights": {"file": weights.name, "sha256": file_sha256(weights)}, "patch_size": [64, 64, 64]}
    entry.update(fields)
    path = folder / "catalogue.json"
    models = json.loads(path.read_text())["models"] if path.exists() else []
    path.write_text(json.dumps({"models": [m for m in models if m["name"] != name] + [entry]}, indent=1))
    return path

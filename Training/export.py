"""Export a checkpoint into a model catalogue: a weights file (the network's state_dict only) and an entry.

The library loads an entry with `torch.load(weights_only=True)` + `load_state_dict(strict=True)` after checking
the SHA-256, so the file holds exactly the plain network's state_dict: float32, or float16 when the float32 file
would exceed `size_limit_mb` (load_state_dict casts back to the parameters' dtype). The entry is appended to,
or replaces the entry of the same name in, the catalogue JSON; weights go next to it (or into
Resources/Weights for the shipped catalogue, where the library looks for them). Keys as read by
BrainTumorFusionLib.engine.catalogue.ModelEntry.from_json; training, split and metrics are shown to users as they are.
"""

import json
import logging
from pathlib import Path

import torch

from BrainTumorFusionLib.engine.catalogue import (
    SHIPPED_CATALOGUE,
    SHIPPED_WEIGHTS,
    ModelEntry,
    file_sha256,
    load_network,
)
from BrainTumorFusionLib.files.file_io import write_atomically
from BrainTumorFusionLib.modalities import MODALITIES

from .checkpoint import checkpoint_file
from .data import REGIONS, write_json
from .evaluate import load_trained, read_means
from .segmentation import SegmentationRecipe

log = logging.getLogger(__name__)

SIZE_LIMIT_MB = 50.0


def weights_folder(catalogue):
    """Where the library looks for the weights of a catalogue's entries."""
    catalogue = Path(catalogue)
    if catalogue.resolve() == SHIPPED_CATALOGUE.resolve():
        return SHIPPED_WEIGHTS
    return catalogue.parent


def export_state_dict(network, dtype="auto", size_limit_mb=SIZE_LIMIT_MB):
    """(state_dict on the CPU, dtype name): floating tensors in float32, or float16 when dtype is 'float16' or
    when 'auto' and the float32 tensors would exceed size_limit_mb."""
    state = {k: v.detach().cpu().clone() for k, v in network.state_dict().items()}
    size_mb = sum(v.numel() * 4 for v in state.values() if v.is_floating_point()) / 2**20
    if dtype == "auto":
        dtype = "float16" if size_mb > size_limit_mb else "float32"
    target = {"float32": torch.float32, "float16": torch.float16}[dtype]
    return {k: v.to(target) if v.is_floating_point() else v for k, v in state.items()}, dtype


def metrics_entry(csv_path):
    means = read_means(csv_path)
    lesion_wise = ({"lesion_dice": {r: round(means[f"lesion_dice_{r}"], 4) for r in REGIONS}}
                   if f"lesion_dice_{REGIONS[0]}" in means else {})  # evaluations before Panoptica lack them
    return {"dice": {r: round(means[f"dice_{r}"], 4) for r in REGIONS},
            "hd95_mm": {r: round(means[f"hd95_{r}"], 2) for r in REGIONS}, **lesion_wise,
            "cases": means["cases"], "evaluation": Path(csv_path).name}


def initialisation(config, catalogue=SHIPPED_CATALOGUE):
    """{"initialised_from": ...} for a run started from another checkpoint (e.g. SwinFUSE pretraining) or from
    shipped weights (then with that model's training record, so the budget of both runs stays on record),
    else {}."""
    if not config.init_from:
        return {}
    record = {"checkpoint": str(config.init_from)}
    try:
        source = torch.load(config.init_from, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError):
        return {"initialised_from": {**record, "note": "the checkpoint could not be read at export time"}}
    if "step" in source:
        record.update(kind=source.get("kind", "training"), steps=int(source["step"]),
                      hours=round(float(source.get("elapsed_seconds", 0.0)) / 3600.0, 3))
    else:
        sha = file_sha256(config.init_from)
        record.update(kind="weights", sha256=sha)
        entries = json.loads(Path(catalogue).read_text())["models"] if Path(catalogue).is_file() else []
        shipped = [e for e in entries if e.get("weights", {}).get("sha256") == sha]
        if shipped:
            record.update(model=shipped[0]["name"], training=shipped[0].get("training", {}))
    return {"initialised_from": record}


def export(checkpoint, name, catalogue=SHIPPED_CATALOGUE, title=None, metrics_csv=None, dtype="auto",
           size_limit_mb=SIZE_LIMIT_MB, data_description=None, window="patch"):
    """Write <name>.pt and the catalogue entry; returns the entry (dict). The written entry is loaded back
    through the library (hash check, strict state_dict) when the library can build the network."""
    path = checkpoint_file(checkpoint)
    network, config, state = load_trained(path)
    run_dir = path.parent.parent
    if metrics_csv is None and (run_dir / "evaluation_validation.csv").is_file():
        metrics_csv = run_dir / "evaluation_validation.csv"
    # before the weights are written: a fine-tune exported under its source's name overwrites the source file
    initialised_from = initialisation(config, catalogue)
    metrics = metrics_entry(metrics_csv) if metrics_csv is not None else None
    if metrics is None:
        log.warning("No evaluation CSV (run `python -m Training evaluate` first): the entry has no metrics.")
    return write_entry(SegmentationRecipe(config), state, network, name, catalogue, run_dir, title=title, dtype=dtype,
                       size_limit_mb=size_limit_mb, data_description=data_description, metrics=metrics,
                       window=window, training=initialised_from)


def write_entry(recipe, state, network, name, catalogue, run_dir, title=None, dtype="auto", size_limit_mb=SIZE_LIMIT_MB,
                data_description=None, metrics=None, notes=None, training=None, **fields):
    """THE catalogue-entry writer: <name>.pt and its entry, loaded back through the library; returns the entry.
    Every entry has the fields below; the recipe's catalogue_entry hook adds its kind's (its `split` and `training`
    details are merged into these), then `fields` (e.g. window), `training` (e.g. initialised_from), metrics and
    notes."""
    config = recipe.config
    weights, dtype = write_weights(network, catalogue, name, dtype, size_limit_mb)
    split = state["split"]
    specific = recipe.catalogue_entry(state)
    entry = {
        "name": name,
        "title": title or specific.pop("title"),
        "task": recipe.kind,
        "network": config.network,
        "config": config.network_config,
        "modalities": list(MODALITIES),
        "spacing_mm": list(config.spacing) if config.spacing else None,
        "patch_size": list(config.patch_size),
        **{key: value for key, value in specific.items() if key not in ("title", "split", "training")},
        **fields,
        "split": {"file": f"{Path(run_dir).name}/split.json", "seed": split.get("seed"),
                  "train": split["train"], "validation": split["validation"], **specific.get("split", {})},
        "training": {"hardware": state.get("hardware", ""),
                     "hours": round(float(state.get("elapsed_seconds", 0.0)) / 3600.0, 3),
                     **specific.get("training", {}),
                     **({"data": data_description} if data_description else {}),
                     "seed": config.seed, "weights_dtype": dtype, **(training or {})},
        "weights": {"file": weights.name, "sha256": file_sha256(weights)},
    }
    if metrics is not None:
        entry["metrics"] = metrics
    if notes:
        entry["notes"] = notes
    add_to_catalogue(entry, catalogue)
    return entry


def write_weights(network, catalogue, name, dtype="auto", size_limit_mb=SIZE_LIMIT_MB):
    """Write <name>.pt (the network's state_dict, see export_state_dict) where the catalogue's weights live,
    atomically; returns (path, dtype name)."""
    folder = weights_folder(catalogue)
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / f"{name}.pt"
    state_dict, dtype = export_state_dict(network, dtype, size_limit_mb)
    write_atomically(lambda temporary: torch.save(state_dict, temporary), weights)
    return weights, dtype


def add_to_catalogue(entry, catalogue):
    """Append the entry to the catalogue JSON (replacing one of the same name), then load it back through the
    library (hash check, strict state_dict): raises if the weights file and the entry disagree."""
    catalogue = Path(catalogue)
    data = json.loads(catalogue.read_text()) if catalogue.is_file() else {"models": []}
    data["models"] = [m for m in data.get("models", []) if m.get("name") != entry["name"]] + [entry]
    write_json(data, catalogue)
    load_network(ModelEntry.from_json(entry, weights_folder(catalogue)), "cpu")

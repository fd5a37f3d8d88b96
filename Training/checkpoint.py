"""Checkpoints: everything needed to continue a run exactly, written atomically (the library's write).

A checkpoint is a dict saved with torch.save and readable with torch.load(weights_only=True):
    kind (segmentation, pretraining, grading), model (the plain network's state_dict), optimizer, scheduler,
    scaler (fp16 only), step, stage, rng (python, numpy, torch and CUDA generator states of every rank), config
    (the run configuration as a dict), split, best {metric, step}, validation (history), elapsed_seconds
    (training wall time so far), hardware (what it ran on), world_size, versions; plus what a recipe adds.
"""

import json
import random
from pathlib import Path

import numpy as np
import torch

from BrainTumorFusionLib.files.file_io import write_atomically

LAST = "last.pt"
BEST = "best.pt"


def rng_state():
    version, state, gauss = random.getstate()
    kind, keys, position, has_gauss, cached = np.random.get_state()
    return {
        "python": [version, list(state), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state):
    version, values, gauss = state["python"]
    random.setstate((version, tuple(values), gauss))
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(checkpoint, path):
    """torch.save through a unique temporary file, fsynced, then renamed: a kill never leaves a partial file
    under the final name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(lambda temporary: torch.save(checkpoint, temporary), path)


def load(path, map_location="cpu"):
    return torch.load(path, map_location=map_location, weights_only=True)


def checkpoint_file(path):
    """A checkpoint file, or the best (else last) checkpoint of a run folder."""
    path = Path(path)
    if path.is_dir():
        for candidate in (path / "checkpoints" / BEST, path / "checkpoints" / LAST, path / BEST, path / LAST):
            if candidate.is_file():
                return candidate
        raise FileNotFoundError(f"No checkpoint (best.pt / last.pt) in {path}.")
    return path


def model_weights(state):
    """The network weights of a loaded file: a checkpoint's "model", or a shipped weights file (a plain
    state_dict, float16 allowed); None when it is neither."""
    if not isinstance(state, dict):
        return None
    if isinstance(state.get("model"), dict):
        return state["model"]
    if state and all(isinstance(value, torch.Tensor) for value in state.values()):
        return state
    return None


def load_matching_weights(network, path):
    """Load the weights of a checkpoint (pretraining or training) or of a shipped weights file into `network`
    where names and shapes agree; floating-point tensors take the network's dtype.

    Returns the number of tensors loaded. Raises ValueError with what to do when the file is not a checkpoint,
    nothing matches, or a matching name has another shape (a different configuration).
    """
    try:
        state = load(path)
    except Exception as error:  # torch raises many types for unreadable files
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ValueError(f"Cannot read {path} ({reason}). Give the last.pt of a pretraining run.") from None
    weights = model_weights(state)
    if weights is None:
        raise ValueError(f"{path} has no model weights. Give the last.pt of a pretraining run.")
    own = network.state_dict()
    mismatched = [k for k, v in weights.items() if k in own and own[k].shape != v.shape]
    if mismatched:
        raise ValueError(f"{path} was made with another network configuration ({mismatched[0]}: "
                         f"{tuple(weights[mismatched[0]].shape)} vs {tuple(own[mismatched[0]].shape)}). "
                         "Fine-tune with the pretraining run's --network-config.")
    shared = {k: v.to(own[k].dtype) if v.is_floating_point() else v for k, v in weights.items() if k in own}
    if not shared:
        raise ValueError(f"No weight of {path} fits this network. Was it made for another network?")
    network.load_state_dict(shared, strict=False)
    return len(shared)


def metrics_log(run_dir, step):
    """run_dir/metrics.jsonl opened for appending, without the records a killed run wrote after `step`."""
    path = Path(run_dir) / "metrics.jsonl"
    if path.is_file():
        kept = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= step]
        write_atomically(lambda temporary: Path(temporary).write_text("".join(line + "\n" for line in kept)), path)
    return open(path, "a")

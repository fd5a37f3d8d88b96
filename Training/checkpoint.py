"""Checkpoints: everything needed to continue a run exactly, written atomically.

A checkpoint is a dict saved with torch.save and readable with torch.load(weights_only=True):
    model (the plain network's state_dict), optimizer, scheduler, scaler (fp16 only), step, rng (python,
    numpy, torch and CUDA generator states), config (TrainConfig as a dict), split, best {metric, step},
    elapsed_seconds (training wall time so far), hardware (what it ran on).
"""

import json
import os
import random
from pathlib import Path

import numpy as np
import torch

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
    """torch.save through a temporary file in the same folder, then rename: a kill never leaves a partial
    file under the final name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".partial-{os.getpid()}-{path.name}")
    try:
        torch.save(checkpoint, temporary)
        with open(temporary, "rb") as stream:
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()


def load(path, map_location="cpu"):
    return torch.load(path, map_location=map_location, weights_only=True)


def metrics_log(run_dir, step):
    """run_dir/metrics.jsonl opened for appending, without the records a killed run wrote after `step`."""
    path = run_dir / "metrics.jsonl"
    if path.is_file():
        kept = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= step]
        path.write_text("".join(line + "\n" for line in kept))
    return open(path, "a")

"""Memory a case will need, estimated before it is read, and memory this process can still get.

The estimate is kept simple: a fixed number of bytes per voxel of the case grid (the four volumes as read and as
float32, their normalised brain crop, region probabilities, labels) plus a fixed number per voxel of the largest
window a segmentation network sees at once (its activations). The constants are the peak memory growth of one
BraTS case (240 x 240 x 155 at 1 mm) with each shipped network on a CPU in float32 (272-422 MB; window
activations 240-520 bytes per voxel), rounded up. A model with a whole-crop window is counted with the whole image
at its spacing, as the brain crop is not known before the case is read: for such models this is an upper bound
(hafb on BraTS: about 1.0 GB estimated, 0.42 GB measured). The grading network runs after segmentation on a
small input and is not counted.
"""

import math
from pathlib import Path
from typing import Iterable, Optional, Sequence

CASE_BYTES_PER_VOXEL = 32
WINDOW_BYTES_PER_VOXEL = 640
_NO_LIMIT = 1 << 60  # cgroup v1 writes "no limit" as a number near 2**63


def needed_bytes(size_ijk: Sequence[int], spacing_ijk: Sequence[float], models: Iterable) -> int:
    """Bytes a case of `size_ijk` voxels at `spacing_ijk` mm needs with these segmentation models (pipeline
    Models: patch_size (D, H, W), spacing_mm (I, J, K) or None, whole_window), which run one after the other."""
    window = 0
    for model in models:
        if model.whole_window:
            scale = [s / m for s, m in zip(spacing_ijk, model.spacing_mm or spacing_ijk)]
            window = max(window, math.prod(math.ceil(n * f) for n, f in zip(size_ijk, scale)))
        else:
            window = max(window, math.prod(model.patch_size))
    return math.prod(size_ijk) * CASE_BYTES_PER_VOXEL + window * WINDOW_BYTES_PER_VOXEL


def available_bytes() -> Optional[int]:
    """Memory this process can still get: MemAvailable of /proc/meminfo, lowered to the headroom of its memory
    cgroup (the limit of a SLURM job or a container). None where neither can be read (Windows, macOS): the
    estimate is then not checked."""
    figures = [figure for figure in (_meminfo_available(), _cgroup_headroom()) if figure is not None]
    return min(figures) if figures else None


def _meminfo_available() -> Optional[int]:
    try:
        with open("/proc/meminfo") as stream:
            for line in stream:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _cgroup_headroom() -> Optional[int]:
    """Limit minus usage of this process's memory cgroup (v2 or v1); None when it has no limit. Inactive file
    pages count as free: the kernel drops them before it kills anything."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            folder, names = Path("/sys/fs/cgroup", path.lstrip("/")), ("memory.max", "memory.current", "inactive_file")
        elif "memory" in controllers.split(","):
            folder = Path("/sys/fs/cgroup/memory", path.lstrip("/"))
            names = ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")
        else:
            continue
        try:
            limit, usage = ((folder / name).read_text().strip() for name in names[:2])
            stat = dict(line.split() for line in (folder / "memory.stat").read_text().splitlines())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < _NO_LIMIT:
            return max(int(limit) - int(usage) + int(stat.get(names[2], 0)), 0)
    return None

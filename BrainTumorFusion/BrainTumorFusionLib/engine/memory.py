"""Memory a case will need, estimated before it is read, and memory this process can still get.

The estimate is kept simple: a fixed number of bytes per voxel of the case grid (the four volumes as read and as
float32, their normalised brain crop, region probabilities, labels) plus a fixed number per voxel of the largest
window a segmentation network sees at once (its activations). The constants are the peak memory growth of one
BraTS case (240 x 240 x 155 at 1 mm) with each shipped network on a CPU in float32 (272-422 MB; window
activations 240-520 bytes per voxel), rounded up. A model with a whole-crop window is counted with the whole image
at its spacing, as the brain crop is not known before the case is read: for such models this is an upper bound
(hafb on BraTS: about 1.0 GB estimated, 0.42 GB measured). The grading network runs after segmentation on a
small input and is not counted.

What is available is the least of the machine's free memory, the headroom of the process's memory cgroup and what
its address-space limit (ulimit -v, SGE's h_vmem) leaves, each with the limit's name and advice for the user
(Headroom).
"""

import errno
import math
from pathlib import Path
from typing import Iterable, Optional, Sequence

CASE_BYTES_PER_VOXEL = 32
WINDOW_BYTES_PER_VOXEL = 640
_NO_LIMIT = 1 << 60  # cgroup v1 writes "no limit" as a number near 2**63
# Address space a case takes (peak VmSize growth) per byte of needed_bytes, which counts memory in use: 1.15 (hafb),
# 1.4 (a compact hafb on a 160 x 160 x 120 crop), 1.6 (the default "auto": an ensemble of three) on a BraTS case;
# malloc arenas, thread stacks and freed-but-kept heap count as address space without being memory in use.
ADDRESS_SPACE_PER_BYTE = 1.6
BLAS_BUFFER = 32 * 2**20  # address space numpy's OpenBLAS maps at its first matrix product, whatever its threads
# What a failed allocation raises besides MemoryError (numpy): torch's CPU allocator and ITK (SimpleITK) raise a
# RuntimeError with these words, as measured under ulimit -v with torch 2.13 and SimpleITK 2.5 (ITK 5.4).
ALLOCATION_FAILURES = ("DefaultCPUAllocator", "Failed to allocate memory", "std::bad_alloc")


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


class Headroom(int):
    """Bytes available (an int), with `limit`: the limit that gives them, in words for the user ("" for the
    machine's free memory), and `advice`: how to get more under that limit ("" for the usual advice)."""

    limit: str
    advice: str

    def __new__(cls, count: int, limit: str = "", advice: str = ""):
        headroom = super().__new__(cls, max(int(count), 0))
        headroom.limit, headroom.advice = limit, advice
        return headroom


def available_bytes() -> Optional[Headroom]:
    """Memory this process can still get: MemAvailable of /proc/meminfo, lowered to the headroom of its memory
    cgroup (the limit of a SLURM job or a container) and to what its address-space limit leaves (`ulimit -v`, which
    SGE's h_vmem sets). None where none can be read (Windows, macOS): the estimate is then not checked."""
    figures = [figure for figure in (_meminfo_available(), _cgroup_headroom(), _address_space_headroom())
               if figure is not None]
    return min(figures) if figures else None


def is_allocation_failure(error: BaseException) -> bool:
    """Whether `error` is an allocation that failed (the process ran out of memory or address space): MemoryError,
    an OSError with ENOMEM, or the RuntimeError of torch or ITK (ALLOCATION_FAILURES)."""
    return (isinstance(error, MemoryError) or (isinstance(error, OSError) and error.errno == errno.ENOMEM)
            or (isinstance(error, RuntimeError) and any(words in str(error) for words in ALLOCATION_FAILURES)))


def _meminfo_available() -> Optional[Headroom]:
    try:
        with open("/proc/meminfo") as stream:
            for line in stream:
                if line.startswith("MemAvailable:"):
                    return Headroom(int(line.split()[1]) * 1024)
    except OSError:
        pass
    return None


def _cgroup_headroom() -> Optional[Headroom]:
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
            return Headroom(int(limit) - int(usage) + int(stat.get(names[2], 0)),
                            f"the memory limit of this job or container of {_size(int(limit))}",
                            "Ask the job for more memory (SLURM: --mem) or run fewer parts per job.")
    return None


def _address_space_headroom() -> Optional[Headroom]:
    """What the soft RLIMIT_AS (`ulimit -v`; SGE's h_vmem, some login nodes) leaves for a case: the limit minus this
    process's virtual size (VmSize of /proc/self/status), over ADDRESS_SPACE_PER_BYTE. None without such a limit
    or where VmSize cannot be read. The loaded program already takes 1.2-1.3 GB of address space (numpy,
    SimpleITK, torch, the library and the model; 0.5 GB of it resident)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    size = _vm_size()
    if soft == resource.RLIM_INFINITY or size is None:
        return None
    if soft - size > 2 * BLAS_BUFFER:
        _start_blas()
        size = _vm_size() or size
    return Headroom((soft - size) / ADDRESS_SPACE_PER_BYTE,
                    f"the address-space limit of this process (ulimit -v; SGE's h_vmem sets it) of {_size(soft)}",
                    f"Ask the job for a larger address-space limit (SGE: -l h_vmem; the program alone takes "
                    f"{_size(size)} of it, a case about {ADDRESS_SPACE_PER_BYTE} times what it needs) or raise "
                    "ulimit -v.")


def _start_blas() -> None:
    """Make numpy's BLAS take its buffer now, so that VmSize counts it: its first matrix product maps
    BLAS_BUFFER, and where that fails under the limit, OpenBLAS (0.3.29, numpy 2.2's) spins forever instead of
    raising."""
    import numpy

    numpy.eye(3) @ numpy.eye(3)


def _vm_size() -> Optional[int]:
    try:
        with open("/proc/self/status") as stream:
            for line in stream:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _size(count: int) -> str:
    return f"{count / 2**30:.1f} GB" if count >= 2**30 else f"{count / 2**20:.0f} MB"

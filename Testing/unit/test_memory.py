"""What engine.memory says is available: the address-space limit (ulimit -v, SGE's h_vmem) beside the machine's
free memory and the cgroup's, named for the user; and which errors are failed allocations."""

import os
import resource
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from BrainTumorFusionLib.engine import memory

GB = 2**30


@pytest.fixture
def plenty(monkeypatch):
    """16 GB free on the machine, no cgroup limit: only the address-space limit can lower the figure."""
    monkeypatch.setattr(memory, "_meminfo_available", lambda: memory.Headroom(16 * GB))
    monkeypatch.setattr(memory, "_cgroup_headroom", lambda: None)


def test_an_address_space_limit_lowers_what_is_available_by_what_the_process_already_takes(plenty, monkeypatch):
    """Before: only MemAvailable and the cgroup were read, so a 2 GB h_vmem job saw 16 GB."""
    monkeypatch.setattr(resource, "getrlimit", lambda which: (
        (2 * GB, resource.RLIM_INFINITY) if which == resource.RLIMIT_AS else (resource.RLIM_INFINITY,) * 2))
    monkeypatch.setattr(memory, "_vm_size", lambda: int(1.2 * GB))
    available = memory.available_bytes()
    assert available == int(0.8 * GB / memory.ADDRESS_SPACE_PER_BYTE)  # 0.5 GB: a case takes 1.6x in address space
    assert available.limit == "the address-space limit of this process (ulimit -v; SGE's h_vmem sets it) of 2.0 GB"
    assert "SGE: -l h_vmem; the program alone takes 1.2 GB of it" in available.advice


def test_without_an_address_space_limit_the_machines_free_memory_counts(plenty, monkeypatch):
    monkeypatch.setattr(resource, "getrlimit", lambda which: (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    available = memory.available_bytes()
    assert available == 16 * GB and available.limit == "" and available.advice == ""


def test_a_process_already_past_its_limit_has_nothing_available(plenty, monkeypatch):
    monkeypatch.setattr(resource, "getrlimit", lambda which: (GB, GB))
    monkeypatch.setattr(memory, "_vm_size", lambda: int(1.3 * GB))
    assert memory.available_bytes() == 0


def test_the_real_limit_and_virtual_size_of_this_process(plenty):
    """/proc/self/status is read as it is; with torch loaded the process already takes over 0.5 GB of address
    space (1.2-1.3 GB with the library and a model)."""
    assert memory._vm_size() > 0.5 * GB
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    try:
        resource.setrlimit(resource.RLIMIT_AS, (memory._vm_size() + 4 * GB, hard))
        available = memory.available_bytes()
        assert 2.4 * GB < available <= 4 * GB / memory.ADDRESS_SPACE_PER_BYTE
        assert "address-space limit" in available.limit
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def test_failed_allocations_of_numpy_torch_and_simpleitk_are_told_from_other_errors():
    failures = []
    for allocate in (lambda: np.empty(2**45), lambda: torch.empty(2**45),
                     lambda: sitk.Image(2**15, 2**15, 2**14, sitk.sitkFloat32)):
        with pytest.raises((MemoryError, RuntimeError)) as error:
            allocate()
        failures.append(error.value)
    assert all(memory.is_allocation_failure(error) for error in failures)
    assert memory.is_allocation_failure(OSError(12, "Cannot allocate memory"))
    assert not memory.is_allocation_failure(RuntimeError("stand-in layer: values out of range"))
    assert not memory.is_allocation_failure(OSError(2, "No such file or directory"))


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_AS and /proc/self/status are Linux's")
def test_numpys_blas_buffer_is_taken_before_the_figure_is_given():
    """OpenBLAS maps 32 MB at numpy's first matrix product and, where that fails under the limit, spins forever
    instead of raising (a case read near the limit hung in its first 3 x 3 product): the figure is taken after."""
    child = textwrap.dedent("""
        import resource, numpy
        from BrainTumorFusionLib.engine import memory
        before = memory._vm_size()
        resource.setrlimit(resource.RLIMIT_AS, (before + 100 * 2**20, resource.RLIM_INFINITY))
        available = memory._address_space_headroom()
        print(memory._vm_size() - before, available)
        numpy.eye(3) @ numpy.eye(3)
    """)
    run = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-2000:]
    grown, available = map(int, run.stdout.split())
    assert grown >= memory.BLAS_BUFFER
    assert available <= (100 * 2**20 - memory.BLAS_BUFFER) / memory.ADDRESS_SPACE_PER_BYTE

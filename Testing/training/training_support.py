"""Helpers shared by the Training tests: real BraTS cases as a tmp folder of symlinks, one prepared cache per
test session, tiny configurations. (A module, not a conftest.py: Testing/conftest.py is imported by name.)"""

import atexit
import csv
import functools
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

from Testing.realdata import BRATS_DIR, REPO, brats_case_dir  # noqa: F401
from Training.config import TrainConfig

# Three real cases from three source groups (CBICA, 2013, TCIA10 - the last an LGG).
CASES = ("Brats18_CBICA_ABM_1", "Brats18_2013_11_1", "Brats18_TCIA10_628_1")
TINY_HAFB = {"widths": [4, 8, 8, 16, 16]}


def make_input(folder, case_ids=CASES, with_table=True):
    """A BraTS-style input folder of symlinks to the real cases (never copies), with their cases.csv rows."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for case_id in case_ids:
        (folder / case_id).symlink_to(brats_case_dir(case_id), target_is_directory=True)
    if with_table:
        with open(BRATS_DIR / "cases.csv", newline="") as stream:
            reader = csv.DictReader(stream)
            rows = [row for row in reader if row["case_id"] in case_ids]
            columns = reader.fieldnames
        with open(folder / "cases.csv", "w", newline="") as stream:
            writer = csv.DictWriter(stream, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
    return folder


@functools.lru_cache(maxsize=None)
def workspace():
    """(input folder, cache folder) shared by the whole session; the three cases prepared at 2 mm once."""
    from Training.data import discover, prepare_cache

    root = Path(tempfile.mkdtemp(prefix="btf-training-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    input_dir = make_input(root / "input")
    cache_dir = root / "cache"
    prepare_cache(discover(input_dir), cache_dir, (2.0, 2.0, 2.0), progress=False)
    return input_dir, cache_dir


def tiny_config(run_dir, **overrides):
    """A hafb run small enough for a few CPU seconds: 32^3 patches, batch 2, single-threaded data loading."""
    input_dir, cache_dir = workspace()
    values = dict(network="hafb", network_config=dict(TINY_HAFB), data_dir=str(input_dir), cache_dir=str(cache_dir),
                  run_dir=str(run_dir), patch_size=[32, 32, 32], batch_size=2, steps=4, lr=3e-3,
                  checkpoint_every=2, validate_every=0, workers=0, val_fraction=0.34, log_every=1, device="cpu",
                  amp="none")  # bf16 kernels of this CPU give non-finite gradients now and then on tiny maps
    values.update(overrides)
    return TrainConfig(**values)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread: small convolutions run faster so on the shared 2-core machine, and results repeat."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def free_port():
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def ddp_worker(rank, world_size, port, config, out_dir):
    """One rank of a gloo DistributedDataParallel run (started by torch.multiprocessing.spawn): trains, then
    saves its final parameters, buffers and losses to out_dir/rank<r>.pt."""
    import os

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from Training.segmentation import train

    final = {}

    def keep(step, network, parts):
        if step == config["steps"]:
            final["parameters"] = {k: v.detach().clone() for k, v in network.named_parameters()}
            final["buffers"] = {k: v.detach().clone() for k, v in network.named_buffers()}

    result = train(config, progress=False, callback=keep)
    torch.save({**final, "losses": result["losses"]}, Path(out_dir) / f"rank{rank}.pt")

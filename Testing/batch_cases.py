"""Inputs for batch tests: small crops of real BraTS cases written into a test's tmp_path (the data itself stays
in ../shared), cheap catalogue models, and the command line in a subprocess."""

import functools
import os
import subprocess
import sys

import numpy as np
import SimpleITK as sitk
import torch

from BrainTumorFusionLib import networks
from BrainTumorFusionLib.app.records import RunSettings
from BrainTumorFusionLib.engine.catalogue import Catalogue
from BrainTumorFusionLib.modalities import MODALITIES
from BrainTumorFusionLib.options import SegmentationOptions
from Testing.plumbing import ConstantGrader, IntensityNet, write_catalogue
from Testing.realdata import REPO, brats_case_dir

SOURCE = "Brats18_2013_11_1"


@functools.lru_cache(maxsize=None)
def _tumor_crop(source: str, size: tuple[int, int, int]) -> tuple[sitk.Image, ...]:
    """The four modalities of a real case cropped to `size` (I, J, K) voxels around its tumor, grid kept."""
    folder = brats_case_dir(source)
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / f"{source}_seg.nii.gz")))
    centre_ijk = np.argwhere(labels > 0).mean(axis=0)[::-1]
    start = [max(int(c) - s // 2, 0) for c, s in zip(centre_ijk, size)]
    crops = []
    for role in MODALITIES:
        image = sitk.ReadImage(str(folder / f"{source}_{role}.nii.gz"))
        crops.append(sitk.RegionOfInterest(image, list(size), start))
    return tuple(crops)


def write_small_case(input_dir, case_id, size=(96, 96, 64), source=SOURCE, names=None):
    """input_dir/case_id/<case_id>_<role>.nii.gz (or names[role]): a crop of a real case around its tumor."""
    folder = input_dir / case_id
    folder.mkdir(parents=True)
    for role, image in zip(MODALITIES, _tumor_crop(source, tuple(size))):
        sitk.WriteImage(image, str(folder / (names or {}).get(role, f"{case_id}_{role}.nii.gz")), True)
    return folder


def small_input(tmp_path, case_ids=("case_a", "case_b")):
    folder = tmp_path / "input"
    for case_id in case_ids:
        write_small_case(folder, case_id)
    return folder


def intensity_catalogue(folder, name="intensity", offset=0.0):
    """folder/catalogue.json with the `intensity` stand-in network as `name` (weights shifted by `offset`) and
    a constant grader named "constant"; returns its path."""
    folder.mkdir(parents=True, exist_ok=True)
    network = IntensityNet()
    with torch.no_grad():
        network.offsets.add_(offset)
    write_catalogue(folder, "intensity", network.state_dict(), name=name, spacing_mm=[2.0, 2.0, 2.0])
    return write_catalogue(folder, "constant_grader", ConstantGrader().state_dict(), name="constant", task="grading")


def settings_for(catalogue_path, model="intensity", grade=False, precision="auto"):
    options = SegmentationOptions(model=model, grade=grade, grading_model="constant", precision=precision)
    return RunSettings.from_catalogue(Catalogue.load([catalogue_path]), options)


def random_hafb_catalogue(folder):
    """A randomly initialised compact hafb in a user catalogue: plumbing only, never shipped. The command line
    in a subprocess knows it without the test-only stand-ins."""
    torch.manual_seed(0)
    network = networks.build("hafb", widths=(4, 8, 8, 16, 16))
    return write_catalogue(folder, "hafb", network.state_dict(), name="random-hafb",
                           config={"widths": [4, 8, 8, 16, 16]}, spacing_mm=[2.0, 2.0, 2.0],
                           patch_size=[64, 64, 64], handles_missing_modalities=True)


def cli_command(*arguments):
    return [sys.executable, "-m", "BrainTumorFusionLib", *map(str, arguments)]


def cli_environment():
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def run_cli(*arguments):
    return subprocess.run(cli_command(*arguments), capture_output=True, text=True, cwd=REPO, env=cli_environment())

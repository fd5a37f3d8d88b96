"""The command line's ensemble of the shipped models on a real case, and its member errors."""

import csv
import os
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from BrainTumorFusionLib.app.cli import main
from BrainTumorFusionLib.engine.catalogue import Catalogue
from Testing.realdata import REPO, brats_case_dir

CASE = "Brats18_CBICA_ABM_1"


def run_cli(*arguments):
    return subprocess.run([sys.executable, "-m", "BrainTumorFusionLib", *arguments], capture_output=True,
                          text=True, cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"})


def linked_case(tmp_path):
    folder = tmp_path / "input"
    folder.mkdir()
    (folder / CASE).symlink_to(brats_case_dir(CASE), target_is_directory=True)
    return folder


@pytest.mark.slow  # two real networks on a whole case (about 20 s on the 2 shared cores)
def test_segment_with_an_ensemble_of_the_shipped_models(tmp_path):
    output = tmp_path / "out"
    done = run_cli("segment", "--input-dir", str(linked_case(tmp_path)), "--output-dir", str(output),
                   "--model", "ensemble", "--members", "hafb,segresnet", "--device", "cpu")
    assert done.returncode == 0, done.stderr
    with open(output / "summary.csv", newline="") as stream:
        (row,) = list(csv.DictReader(stream))
    assert row["status"] == "done" and row["model"] == "ensemble (hafb + segresnet)"
    labels = sitk.ReadImage(str(output / f"{CASE}_seg.nii.gz"))
    reference = sitk.ReadImage(str(brats_case_dir(CASE) / f"{CASE}_t1.nii.gz"))
    assert labels.GetSize() == reference.GetSize() and labels.GetOrigin() == reference.GetOrigin()
    predicted = sitk.GetArrayFromImage(labels)
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(brats_case_dir(CASE) / f"{CASE}_seg.nii.gz")))
    assert set(np.unique(predicted)) <= {0, 1, 2, 4}
    whole_tumor_dice = 2 * ((predicted > 0) & (truth > 0)).sum() / ((predicted > 0).sum() + (truth > 0).sum())
    assert whole_tumor_dice > 0.75  # both members reach about 0.8 on their validation cases
    assert float(row["WT_ml"]) > 0


def test_member_errors_stop_before_any_output(tmp_path, capsys):
    output = tmp_path / "out"
    assert main(["segment", "--input-dir", str(linked_case(tmp_path)), "--output-dir", str(output),
                 "--model", "ensemble", "--members", "hafb,nope"]) == 2
    message = capsys.readouterr().err
    available = ", ".join(Catalogue.load().names("segmentation"))
    assert f"Unknown ensemble member 'nope'. Available segmentation models: {available}." in message
    assert main(["predict", "--flair", str(brats_case_dir(CASE) / f"{CASE}_flair.nii.gz"), "--output-dir",
                 str(output), "--model", "ensemble", "--members", "hafb,segresnet"]) == 2
    message = capsys.readouterr().err  # the shipped hafb handles missing modalities, segresnet does not
    assert ("'segresnet' needs T1, T1ce, T2. Leave segresnet out of the members, or give them (--t1 --t1ce --t2, or "
            "<id>_t1, <id>_t1ce, <id>_t2 in the case folder)") in message
    assert main(["predict", "--flair", str(brats_case_dir(CASE) / f"{CASE}_flair.nii.gz"), "--output-dir",
                 str(output), "--members", "hafb,segresnet"]) == 2
    assert "only apply to the model 'ensemble'" in capsys.readouterr().err
    assert not output.exists()
    assert main(["models"]) == 0
    default = ",".join(Catalogue.load().default_ensemble())
    assert f"ensemble     segmentation  mean of --members (default: {default})" in capsys.readouterr().out


def test_a_model_that_cannot_run_is_refused_before_the_inputs_are_read_or_registered(tmp_path, capsys):
    unreadable = tmp_path / "x_flair.nii.gz"  # reading it would fail: the model's error must come first
    unreadable.write_text("not an image")
    output = tmp_path / "out"
    assert main(["predict", "--flair", str(unreadable), "--output-dir", str(output), "--model", "segresnet",
                 "--register", "on"]) == 2
    assert "Model 'segresnet' needs T1, T1ce, T2, which are missing" in capsys.readouterr().err
    assert not output.exists()

"""The `compare` command on a real case against its own copy moved rigidly (the whole head, as between two exams)
with the shipped `hafb`: the follow-up is registered back, every measurable lesion matched, the SPD and the
enhancing volume change within the tolerance below, and the category is "stable disease" with its imaging-only
caveat; a pair with a missing folder fails alone."""

import csv
import json

import numpy as np
import SimpleITK as sitk

from BrainTumorFusionLib.measurements.response import CAVEAT, STABLE
from Testing.batch_cases import run_cli
from Testing.moved_cases import moved, random_rigid, read_images
from Testing.realdata import brats_case_dir

CASE = "Brats18_CBICA_AQT_1"  # one measurable enhancing lesion of about 54 x 44 mm
# The same exam segmented twice, once after a rigid move and linear resampling: the labels differ at the margins.
# Measured on this case (2026-12-07, hafb, CPU): SPD -1.5 %, enhancing volume +6.5 %, whole tumor +0.8 %.
TOLERANCE = 0.15


def write_moved_exam(out_dir, seed=5):
    """The case with all four sequences moved by one rigid transform (the patient lay differently)."""
    images = read_images(brats_case_dir(CASE))
    transform = random_rigid(np.random.default_rng(seed), images["t1ce"], 10.0, 10.0)
    folder = out_dir / f"{CASE}_later"
    folder.mkdir(parents=True)
    for role, image in images.items():
        sitk.WriteImage(moved(image, transform), str(folder / f"{CASE}_later_{role}.nii.gz"))
    return folder


def test_a_case_against_its_rigidly_moved_copy_is_stable(tmp_path):
    follow_up = write_moved_exam(tmp_path)
    pairs = tmp_path / "pairs.csv"
    pairs.write_text(f"id,baseline,follow_up\nsame,{brats_case_dir(CASE)},{follow_up}\n"
                     f"missing,{brats_case_dir(CASE)},{tmp_path / 'nowhere'}\n")
    output = tmp_path / "out"
    done = run_cli("compare", "--pairs", pairs, "--output-dir", output, "--model", "hafb", "--device", "cpu")
    assert done.returncode == 1, done.stderr  # the missing folder fails alone
    rows = {row["pair_id"]: row for row in csv.DictReader((output / "comparisons.csv").open())}
    assert rows["missing"]["status"] == "failed" and "holds no case" in rows["missing"]["message"]
    assert rows["same"]["status"] == "done" and CAVEAT in rows["same"]["category"]
    for name in ("same_baseline.seg.nrrd", "same_follow_up.seg.nrrd", "same_comparison.json"):
        assert (output / name).is_file()
    assert not list(output.glob("missing_*"))

    record = json.loads((output / "same_comparison.json").read_text())
    print(json.dumps({key: record[key] for key in ("category", "reasons", "changes", "matched_lesions",
                                                   "new_lesions", "vanished_lesions")}, indent=1))
    assert record["registration"]["registered"]
    assert record["category"] == record["volumetric_category"] == STABLE
    for quantity in ("spd_mm2", "ET_ml"):
        assert abs(record["changes"][quantity]["relative"]) <= TOLERANCE, record["changes"][quantity]
    measurable = [lesion["number"] for lesion in record["baseline"]["lesions"] if lesion["measurable"]]
    assert measurable and {pair["baseline"] for pair in record["matched_lesions"]} >= set(measurable)
    new_measurable = record["new_measurable_lesions"]
    assert new_measurable == []

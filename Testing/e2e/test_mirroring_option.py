"""The test-time augmentation option (`tta`: off or mirror) from the command line to what is recorded: predict's
result.json, the batch's records, settings and summary.csv; a rerun with the other setting is refused. The
network is a randomly initialised compact hafb (plumbing only) on small crops of a real case."""

import csv
import json

import pytest

from BrainTumorFusionLib.app.records import RunSettings
from BrainTumorFusionLib.engine.catalogue import Catalogue
from BrainTumorFusionLib.options import SegmentationOptions
from Testing.batch_cases import (
    intensity_catalogue,
    random_hafb_catalogue,
    run_cli,
    settings_for,
    small_input,
    write_small_case,
)


def test_segment_records_mirroring_and_refuses_mixing_it_with_results_made_without(tmp_path):
    catalogue, output = random_hafb_catalogue(tmp_path), tmp_path / "out"
    options = ["--model", "random-hafb", "--catalogue", str(catalogue), "--device", "cpu"]
    done = run_cli("segment", "--input-dir", str(small_input(tmp_path)), "--output-dir", str(output), *options,
                   "--tta", "mirror")
    assert done.returncode == 0, done.stderr
    record = json.loads((output / "case_a.json").read_text())
    assert record["status"] == "done" and record["settings"]["tta"] == "mirror"
    with open(output / "summary.csv", newline="") as stream:
        assert [row["tta"] for row in csv.DictReader(stream)] == ["mirror", "mirror"]
    without = run_cli("segment", "--input-dir", str(tmp_path / "input"), "--output-dir", str(output), *options)
    assert without.returncode == 2
    assert "test-time augmentation mirror, now off" in without.stderr and "--overwrite" in without.stderr


@pytest.mark.parametrize("command", [["segment", "--input-dir", "in"], ["predict"]])
def test_an_unknown_mode_is_refused_with_the_choices(tmp_path, command):
    refused = run_cli(*command, "--output-dir", str(tmp_path / "out"), "--tta", "sideways")
    assert refused.returncode == 2
    assert "argument --tta: invalid choice: 'sideways' (choose from 'off', 'mirror')" in refused.stderr
    assert not (tmp_path / "out").exists()


def test_predict_writes_the_mode_into_result_json(tmp_path):
    catalogue = random_hafb_catalogue(tmp_path)
    folder = write_small_case(tmp_path / "input", "case_a")
    files = [argument for role in ("t1", "t1ce", "t2", "flair")
             for argument in (f"--{role}", str(folder / f"case_a_{role}.nii.gz"))]
    for mode in ("mirror", "off"):
        output = tmp_path / mode
        done = run_cli("predict", *files, "--output-dir", str(output), "--model", "random-hafb", "--catalogue",
                       str(catalogue), "--device", "cpu", "--tta", mode, "--register", "off", "--skull-strip", "off")
        assert done.returncode == 0, done.stderr
        assert json.loads((output / "result.json").read_text())["tta"] == mode


def test_records_made_before_the_option_count_as_made_without_mirroring(tmp_path):
    catalogue = intensity_catalogue(tmp_path)
    plain = settings_for(catalogue)
    older = {key: value for key, value in plain.as_json().items() if key != "tta"}
    assert plain.tta == "off" and plain.matches(older) and plain.matches(plain.as_json())
    options = SegmentationOptions(model="intensity", grading_model="constant", tta="mirror")
    mirrored = RunSettings.from_catalogue(Catalogue.load([catalogue]), options)
    assert not mirrored.matches(older) and mirrored.differences(older) == ["test-time augmentation off, now mirror"]

"""Batch runs and their folders: an output folder inside the input folder, folders without images, --overwrite
leaving no file of the earlier run, option errors leaving no output folder, a part without cases. Inputs are
small crops of real cases (batch_cases)."""

import logging

import SimpleITK as sitk

from BrainTumorFusionLib.app import cli
from BrainTumorFusionLib.app.batch import run_batch
from BrainTumorFusionLib.engine.catalogue import Catalogue
from BrainTumorFusionLib.engine.pipeline import Pipeline
from BrainTumorFusionLib.modalities import MODALITIES
from Testing.batch_cases import intensity_catalogue, settings_for, small_input, write_small_case
from Testing.dicom_cases import write_dicom_case


def intensity_pipeline(catalogue):
    return lambda: Pipeline(model="intensity", device="cpu", catalogue=Catalogue.load([catalogue]))


def test_output_folder_inside_the_input_is_no_case_and_highdicom_keeps_quiet(tmp_path, capsys, caplog):
    caplog.set_level(logging.INFO)  # as the command line's console shows them
    source = write_small_case(tmp_path / "nifti", "source")
    inputs = tmp_path / "input"
    write_dicom_case(inputs / "dicom_case", {role: sitk.ReadImage(str(source / f"source_{role}.nii.gz"))
                                             for role in MODALITIES})
    output = inputs / "out"  # its <id>_seg.dcm and <id>_sr.dcm made it look like a DICOM case
    catalogue = intensity_catalogue(tmp_path / "models")
    argv = ["segment", "--input-dir", str(inputs), "--output-dir", str(output), "--model", "intensity",
            "--catalogue", str(catalogue), "--device", "cpu"]

    assert cli.main(argv) == 0
    assert (output / "dicom_case_seg.dcm").is_file()
    code, said = cli.main(argv), capsys.readouterr()
    assert code == 0, said.err
    assert "1 of 1 cases done" in said.out and "already done" in said.err
    assert "no images" not in said.err and not (output / "out.json").exists()
    # highdicom narrates every SEG it builds at INFO, dozens of lines per case in the batch's console
    assert not [r.getMessage() for r in caplog.records if r.name.startswith("highdicom") and r.levelno < logging.WARNING]


def test_overwrite_removes_every_file_of_the_earlier_run_of_a_case(tmp_path):
    inputs = small_input(tmp_path, ("case_a",))
    catalogue = intensity_catalogue(tmp_path / "models")
    output = tmp_path / "out"
    run_batch(inputs, output, settings_for(catalogue), intensity_pipeline(catalogue), show_progress=False,
              preview=True)
    (output / "case_a_sr.dcm").write_bytes(b"left by an earlier version")  # not in the record: by output_names
    [row] = run_batch(inputs, output, settings_for(catalogue), intensity_pipeline(catalogue), show_progress=False,
                      overwrite=True)
    assert row["status"] == "done"
    assert sorted(p.name for p in output.iterdir()) == [
        ".summary.csv.lock", "case_a.json", "case_a.seg.nrrd", "case_a_seg.nii.gz", "summary.csv"]


def test_a_folder_without_images_is_skipped_with_a_line(tmp_path, capsys):
    inputs = small_input(tmp_path, ("case_a",))
    (inputs / "notes").mkdir()
    (inputs / "notes" / "protocol.txt").write_text("not an image")
    catalogue = intensity_catalogue(tmp_path / "models")
    rows = run_batch(inputs, tmp_path / "out", settings_for(catalogue), intensity_pipeline(catalogue),
                     show_progress=False)
    assert [(row["case_id"], row["status"]) for row in rows] == [("case_a", "done")]
    assert (f"{inputs / 'notes'}: no images (<id>_t1/_t1ce/_t2/_flair NIfTI/NRRD or DICOM series); skipped"
            in capsys.readouterr().err)


def test_option_errors_leave_no_output_folder(tmp_path, capsys):
    inputs = small_input(tmp_path, ("case_a",))
    catalogue = intensity_catalogue(tmp_path / "models")
    output = tmp_path / "out"
    for options, said in ((["--precision", "fp16"], "Precision fp16 needs a CUDA GPU"),
                          (["--members", "intensity,intensity"], "only apply to the model 'ensemble'")):
        code = cli.main(["segment", "--input-dir", str(inputs), "--output-dir", str(output), "--model", "intensity",
                         "--catalogue", str(catalogue), "--device", "cpu", *options])
        assert code == 2 and said in capsys.readouterr().err
        assert not output.exists()


def test_a_part_without_cases_says_so(tmp_path, capsys):
    inputs = small_input(tmp_path, ("case_a", "case_b"))
    catalogue = intensity_catalogue(tmp_path / "models")
    code = cli.main(["segment", "--input-dir", str(inputs), "--output-dir", str(tmp_path / "out"), "--model",
                     "intensity", "--catalogue", str(catalogue), "--num-parts", "3", "--part-id", "2"])
    said = capsys.readouterr().out
    assert code == 0 and "No case in part 2 of parts 0-2: the input has fewer cases than --num-parts" in said
    assert "summary in" not in said and not (tmp_path / "out" / "summary.csv").exists()

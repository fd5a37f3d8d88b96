"""The core pipeline on real BraTS cases with an injected deterministic predictor (plumbing, not accuracy)."""

import numpy as np
import pytest
import SimpleITK as sitk

from BrainTumorFusionLib.engine.pipeline import Pipeline
from BrainTumorFusionLib.engine.preprocessing import prepare
from BrainTumorFusionLib.errors import InputError
from BrainTumorFusionLib.files.file_io import CaseFiles, case_files_in, read_case, write_labels
from BrainTumorFusionLib.measurements.regions import region_volumes
from Testing.plumbing import intensity_model
from Testing.realdata import brats_case_dir


@pytest.fixture(scope="module")
def real_case():
    return read_case(case_files_in(brats_case_dir("Brats18_CBICA_ABM_1")))


def dice(a, b):
    return 2 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1)


def test_labels_lie_on_the_input_grid(real_case, tmp_path):
    case, reference = real_case
    result = Pipeline(device="cpu", segmenter=intensity_model()).run(case)
    assert result.labels.shape == case.image.shape[1:] == sitk.GetArrayViewFromImage(reference).shape
    assert set(np.unique(result.labels)) <= {0, 1, 2, 4} and (result.labels > 0).any()
    assert result.volumes_ml == region_volumes(result.labels, 0.001)
    write_labels(result.labels, reference, tmp_path / "out_seg.nii.gz")
    written = sitk.ReadImage(str(tmp_path / "out_seg.nii.gz"))
    assert written.GetSize() == reference.GetSize() and written.GetOrigin() == reference.GetOrigin()
    assert written.GetSpacing() == reference.GetSpacing() and written.GetDirection() == reference.GetDirection()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written), result.labels)
    # Nothing outside the brain: the crop/uncrop put the labels back where the brain is.
    assert not result.labels[~np.any(case.image != 0, axis=0)].any()


def test_model_spacing_round_trip_keeps_the_tumor_in_place(real_case):
    """Ground-truth tumor mask taken to the 2 mm model grid and back lands where it was (physical space)."""
    case, _ = real_case
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(brats_case_dir("Brats18_CBICA_ABM_1")
                                                      / "Brats18_CBICA_ABM_1_seg.nii.gz"))) > 0
    prepared = prepare(case, (2.0, 2.0, 2.0))
    assert prepared.image.shape[1:] == tuple(round(n / 2) for n in prepared.cropped_shape)
    truth_crop = truth[prepared.crop].astype(np.float32)
    back = prepared.to_crop_grid(prepared.to_model_grid(truth_crop[None]))[0] > 0.5
    assert back.shape == truth_crop.shape
    assert dice(back, truth_crop > 0) > 0.9
    np.testing.assert_allclose(np.argwhere(back).mean(0), np.argwhere(truth_crop).mean(0), atol=0.5)


def test_model_spacing_output_is_on_the_input_grid(real_case):
    case, _ = real_case
    fine = Pipeline(device="cpu", segmenter=intensity_model()).run(case)
    coarse = Pipeline(device="cpu", segmenter=intensity_model(spacing_mm=(2.0, 2.0, 2.0))).run(case)
    assert coarse.labels.shape == fine.labels.shape
    # The pointwise rule is noisy at 1 mm and smoothed at 2 mm, so only broad agreement is expected.
    assert dice(coarse.labels > 0, fine.labels > 0) > 0.65


def test_progress_is_monotonic_and_complete(real_case):
    case, _ = real_case
    reports = []
    Pipeline(device="cpu", segmenter=intensity_model()).run(case, lambda f, m: reports.append(f))
    assert reports[0] == 0.0 and reports[-1] == 1.0 and reports == sorted(reports)


def test_missing_modality_needs_a_model_that_handles_it():
    folder = brats_case_dir("Brats18_CBICA_ABM_1")
    files = {role: folder / f"Brats18_CBICA_ABM_1_{role}.nii.gz" for role in ("t1", "t2", "flair")}
    case, _ = read_case(CaseFiles("no_t1ce", files))
    with pytest.raises(InputError, match="needs T1ce") as error:
        Pipeline(device="cpu", segmenter=intensity_model()).run(case)
    # Files and scene alike: the command-line flag, the batch file name and the module's selector.
    assert "--t1ce" in str(error.value) and "<id>_t1ce" in str(error.value) and "in the module" in str(error.value)
    result = Pipeline(device="cpu", segmenter=intensity_model(handles_missing=True)).run(case)
    assert result.labels.shape == case.image.shape[1:]

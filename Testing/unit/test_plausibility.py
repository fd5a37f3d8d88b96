"""Plausibility warnings on a real BraTS case, each triggered by one change to it, and no grade without a tumor."""

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from BrainTumorFusionLib.choices import DEFAULT_MODEL
from BrainTumorFusionLib.engine.pipeline import Model, Pipeline
from BrainTumorFusionLib.files.file_io import case_files_in, read_case
from BrainTumorFusionLib.modalities import MODALITIES
from BrainTumorFusionLib.preparation import skull_stripping
from BrainTumorFusionLib.preparation.inputs import assemble_case
from BrainTumorFusionLib.preparation.plausibility import result_warnings
from Testing.plumbing import ConstantGrader, intensity_model
from Testing.realdata import brats_case_dir

CASE = "Brats18_CBICA_ABM_1"


@pytest.fixture(scope="module")
def real():
    return read_case(case_files_in(brats_case_dir(CASE)))[0]


def warnings_of(case, transform=lambda array: array, matrix=None, **replaced):
    """Warnings of the real case with each volume transformed (and placed by `matrix`), some roles replaced."""
    matrix = case.ijk_to_ras if matrix is None else matrix
    volumes = {role: (transform(case.image[channel]), matrix) for channel, role in enumerate(MODALITIES)}
    volumes.update(replaced)
    return assemble_case(volumes, "modified").warnings


def test_the_real_case_as_it_is_has_no_warning(real):
    assert real.warnings == [] and warnings_of(real) == []


def test_thick_slices(real):
    """All four at 1 x 1 x 5 mm overestimated the whole tumor by 37 %."""
    matrix = real.ijk_to_ras @ np.diag([1.0, 1.0, 5.0, 1.0])
    (warning,) = warnings_of(real, lambda array: array[::5], matrix)
    assert warning.startswith("T1, T1ce, T2, FLAIR have 5.0 mm slices: the models were trained on 1 mm images")
    matrix = real.ijk_to_ras @ np.diag([1.0, 4.0, 1.0, 1.0])  # one role only, thick along J
    t2 = (real.image[2][:, ::4], matrix)
    assert any(warning.startswith("T2 has 4.0 mm slices") for warning in warnings_of(real, t2=t2))


def test_a_field_of_view_smaller_than_a_brain(real):
    warnings = warnings_of(real, lambda array: array[50:110])
    assert "T1, T1ce, T2, FLAIR cover only 60 mm along one axis, less than a brain" in warnings[0]


def test_missing_flair_quotes_the_measured_drop(real):
    assert warnings_of(real, flair=None) == [
        "FLAIR is missing: whole-tumor accuracy drops without it (hafb: Dice 0.630 instead of 0.822 on 17 cases); "
        "give the FLAIR series if there is one."]


def test_missing_t1ce_quotes_the_measured_drop(real):
    [warning] = warnings_of(real, t1ce=None)
    assert warning.startswith("T1ce is missing: the enhancing tumor and the tumor core cannot be told reliably")
    assert "ET Dice 0.083 instead of 0.480" in warning


def with_background(array):
    return np.where(array == 0, 7.0, array).astype(np.float32)


def larger_than_a_brain(warnings):
    [warning] = [warning for warning in warnings if "more than a brain" in warning]
    assert "HD-BET" not in warning and "SynthStrip" not in warning  # the tool strips the skull itself
    return warning


def test_a_non_zero_background_without_skull_stripping_points_to_the_tools_own_option(real):
    warning = larger_than_a_brain(warnings_of(real, with_background))  # skull stripping off, as by default
    assert warning.startswith("The non-zero part of the images is 8928 mL, more than a brain (BraTS: 1150-1730 mL): "
                              "they are probably not skull-stripped or have a non-zero background")
    assert "run with skull stripping (Skull stripping: auto in the module, --skull-strip auto on the command line)" \
        in warning


def test_after_the_runs_own_skull_stripping_it_says_to_check_the_input_not_to_strip_again(real, monkeypatch):
    """A stripping that left the whole head (here: a mask of the whole grid) used to be told "strip the skull
    first (e.g. HD-BET or SynthStrip)"."""
    monkeypatch.setattr(skull_stripping, "brain_mask", lambda image, *args, **keywords: sitk.Cast(
        image * 0 + 1, sitk.sitkUInt8))
    volumes = {role: (with_background(real.image[channel]), real.ijk_to_ras) for channel, role in enumerate(MODALITIES)}
    case = assemble_case(volumes, "stripped", skull_strip="on")
    assert "skull_strip" in case.stages
    warning = larger_than_a_brain(case.warnings)
    assert warning.startswith("The non-zero part of the images is 8928 mL, more than a brain (BraTS: 1150-1730 mL) "
                              "even after this run's skull stripping: the stripped images still look like a head")
    assert "check the input" in warning and "--skull-strip" not in warning and "strip the skull" not in warning


@pytest.mark.parametrize("moved", ["by its header", "on the same grid"])
def test_misaligned_inputs_are_not_blamed_on_skull_stripping(real, moved):
    """FLAIR 80 mm off the others: each input is a skull-stripped brain, together they cover more than one."""
    if moved == "by its header":  # registration off: resampled as the headers place it
        matrix = real.ijk_to_ras.copy()
        matrix[0, 3] += 80.0
        flair = (real.image[3], matrix)
    else:  # on the same grid: preparation sees nothing to resample or judge
        flair = (np.roll(real.image[3], 60, axis=2), real.ijk_to_ras)
    warning = larger_than_a_brain(warnings_of(real, flair=flair))
    assert "because the inputs do not lie on each other (the FLAIR head overlaps the T1ce head only " in warning
    assert "they are probably misaligned" in warning and "--register auto|on" in warning
    assert "skull" not in warning


def test_misaligned_heads_with_their_skulls_are_told_both(real):
    """Each input larger than a brain on its own (a non-zero background, as a head has) and FLAIR 60 mm off."""
    flair = (np.roll(with_background(real.image[3]), 60, axis=2), real.ijk_to_ras)
    warning = larger_than_a_brain(warnings_of(real, with_background, flair=flair))
    assert "because the inputs do not lie on each other (the FLAIR head overlaps the T1ce head only " in warning
    assert "T1 alone is 8928 mL: they are probably misaligned and not skull-stripped" in warning
    assert "--register auto|on" in warning and "--skull-strip auto" in warning


def test_a_brain_cut_down_to_a_ball_is_smaller_than_a_brain(real):
    k, j, i = np.indices(real.image.shape[1:])
    ball = (k - 75) ** 2 + (j - 120) ** 2 + (i - 120) ** 2 < 45 ** 2  # 382 mL
    warnings = warnings_of(real, lambda array: array * ball)
    assert any("The non-zero part of the images is only" in warning and "less than a brain" in warning
               for warning in warnings)


def test_noise_in_a_role_shows_no_anatomy(real):
    t2 = real.image[2]
    noise = np.where(t2 != 0, np.random.default_rng(0).normal(500, 100, t2.shape), 0).astype(np.float32)
    warnings = warnings_of(real, t2=(noise, real.ijk_to_ras))
    assert len(warnings) == 1 and warnings[0].startswith("T2 shows no anatomy (neighbouring voxels correlate 0.0")


def test_swapped_t1_and_t2_have_intensities_unlike_their_roles(real):
    warnings = warnings_of(real, t1=(real.image[2], real.ijk_to_ras), t2=(real.image[0], real.ijk_to_ras))
    assert any(warning.startswith("The T1 intensities are distributed unlike any T1 in BraTS (skewness 1.")
               for warning in warnings)


@pytest.mark.parametrize("whole, words", [
    (0.0, "No tumor was found"),
    (2.0, "The whole tumor is only 2.0 mL, smaller than the BraTS tumors (15-217 mL)"),
    (674.0, "The whole tumor is 674 mL, larger than the BraTS tumors (15-217 mL)"),
])
def test_tumor_volume_outside_the_brats_range(whole, words):
    (warning,) = result_warnings({"WT": whole})
    assert warning.startswith(words)
    if whole == 2.0:  # not only a false detection: a model may have missed most of a large tumor
        assert "may be a false detection, or the model may have missed most of a tumor" in warning
    assert result_warnings({"WT": 54.1}) == []


class NoTumor(torch.nn.Module):
    """Region logits that never pass the threshold."""

    def forward(self, x, present=None):
        return torch.full((x.shape[0], 3) + x.shape[2:], -10.0)


def test_no_grade_without_a_tumor(real):
    """A grader always answers, so a case without tumor (noise) came out "HGG 1.0"."""
    grader = Model("constant", ConstantGrader().eval())
    nothing = Pipeline(device="cpu", segmenter=Model("nothing", NoTumor()), grader=grader).run(real)
    assert nothing.volumes_ml["WT"] == 0 and nothing.grade_probabilities is None
    assert nothing.warnings[0].startswith("No tumor was found")
    assert nothing.warnings[1] == "Not graded: there is no tumor to grade."
    graded = Pipeline(device="cpu", segmenter=intensity_model(), grader=grader).run(real)
    assert graded.volumes_ml["WT"] > 0 and set(graded.grade_probabilities) == {"HGG", "LGG"}


def test_noise_in_a_brain_is_not_graded_by_the_default_models(real):
    """Before: the shipped models found a little "tumor" in noise and graded it "HGG 1.0", without a warning."""
    brain = np.any(real.image != 0, axis=0)
    rng = np.random.default_rng(0)
    noise = {role: (np.where(brain, rng.normal(500, 100, brain.shape), 0).astype(np.float32), real.ijk_to_ras)
             for role in MODALITIES}
    result = Pipeline(device="cpu", grade=True).run(assemble_case(noise, "noise"))
    assert result.grade_probabilities is None
    assert sum(" shows no anatomy " in warning for warning in result.warnings) == 4
    assert any(warning.startswith("Not graded: ") for warning in result.warnings)


@pytest.mark.parametrize("case_id", [
    "Brats18_CBICA_AQR_1",  # the smallest tumor of the shared cases (14.8 mL)
    "Brats18_2013_20_1",  # the largest tumor (217 mL), FLAIR covering a third less brain than the others
    "Brats18_CBICA_ATD_1",  # the smallest brain (1146 mL)
])
def test_no_warning_on_real_cases_with_the_default_model(case_id):
    case, _ = read_case(case_files_in(brats_case_dir(case_id)))
    result = Pipeline(model=DEFAULT_MODEL, device="cpu").run(case)
    assert result.volumes_ml["WT"] > 0 and result.warnings == []

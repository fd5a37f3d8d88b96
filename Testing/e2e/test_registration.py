"""Registration on real cases: two shared BraTS cases with T1, T2 and FLAIR each moved by its own seeded random rigid
transform (up to 15 degrees and 15 mm; FLAIR also on 1 x 1 x 5 mm slices, Testing/moved_cases.py), segmented by the
library Pipeline with the shipped hafb model. Dice is measured against the BraTS ground truth (the labels lie on
T1ce's grid, which the move leaves alone): with registration the mean of WT, TC and ET is within DICE_GAP of the
same model's on the aligned case on the same grids (unmoved, FLAIR on the same 5 mm slices, which alone changed the
mean by less than 0.02 on three cases; Testing/benchmarks/registration_dice.py prints both);
without registration every moved input is warned about. Also: what a failed registration says."""

import numpy as np
import pytest
import SimpleITK as sitk

from BrainTumorFusionLib.engine.pipeline import Pipeline
from BrainTumorFusionLib.errors import InputError
from BrainTumorFusionLib.files.file_io import case_files_in, read_case
from BrainTumorFusionLib.preparation import registration
from BrainTumorFusionLib.preparation.geometry import ijk_to_ras_of
from BrainTumorFusionLib.preparation.inputs import labels_on_input_grids
from BrainTumorFusionLib.preparation.registration import align
from Testing.moved_cases import MOVED_ROLES, random_rigid, read_images, region_dice, write_moved_case
from Testing.realdata import brats_case_dir

CASES = ("Brats18_CBICA_ABM_1", "BraTS2021_00006")
# Issue 11: within 0.02 (Testing/benchmarks/registration_dice.py: registered 0.008 below the same grids unmoved on ABM_1,
# 0.003 above on BraTS2021_00006, the benchmark's seeds; docs/benchmarks.md has the table).
DICE_GAP = 0.02


@pytest.fixture(scope="module")
def pipeline():
    return Pipeline(model="hafb", device="cpu")


@pytest.fixture(scope="module", params=CASES)
def moved(request, tmp_path_factory, pipeline):
    """(case id, ground truth, aligned Dice (same grids), moved folder, the transforms used, the registered case, its
    reference image and its result)."""
    case_id = request.param
    folder = brats_case_dir(case_id)
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / f"{case_id}_seg.nii.gz")))
    aligned, _ = read_case(case_files_in(folder), register="auto")
    assert not aligned.alignments and "register" not in aligned.stages  # aligned BraTS inputs are left alone
    seed = CASES.index(case_id)
    thick, _ = write_moved_case(folder, tmp_path_factory.mktemp("thick"), seed, max_degrees=0.0, max_mm=0.0)
    aligned_dice = region_dice(pipeline.run(read_case(case_files_in(thick), register="off")[0]).labels, truth)
    moved_folder, transforms = write_moved_case(folder, tmp_path_factory.mktemp("moved"), seed)
    case, reference = read_case(case_files_in(moved_folder), register="auto")
    return case_id, truth, aligned_dice, moved_folder, transforms, case, reference, pipeline.run(case)


def test_registration_recovers_the_aligned_dice(moved):
    case_id, truth, aligned_dice, _, transforms, case, reference, result = moved
    assert case.reference_role == "t1ce" and sorted(case.alignments) == sorted(MOVED_ROLES)
    assert all(alignment.registered and alignment.overlap_after >= registration.HEAD_POOR
               for alignment in case.alignments.values())
    assert not any("misaligned" in warning for warning in result.warnings)
    # Result on exactly the T1ce grid, so it is scored against the unmoved ground truth.
    assert result.labels.shape == sitk.GetArrayViewFromImage(reference).shape
    np.testing.assert_allclose(result.ijk_to_ras, ijk_to_ras_of(reference), atol=1e-6)
    registered_dice = region_dice(result.labels, truth)
    aligned_mean, registered_mean = np.mean(list(aligned_dice.values())), np.mean(list(registered_dice.values()))
    assert registered_mean >= aligned_mean - DICE_GAP, (case_id, aligned_dice, registered_dice)
    # Each stage's seconds are recorded, registration first.
    assert list(result.stages) == ["register", "segment"] and result.stages["register"] > 0


def test_the_found_transforms_are_the_inverse_moves(moved):
    """Where the found transform sends the reference's head box corners is within 6 mm of where the true inverse
    move sends them (2 mm working grid, FLAIR on 5 mm slices)."""
    *_, transforms, case, reference, _ = moved
    mask = np.argwhere(registration.head_mask(reference))
    low, high = mask.min(0)[::-1], mask.max(0)[::-1]
    corners = [reference.TransformIndexToPhysicalPoint([int(v) for v in np.where(bits, high, low)])
               for bits in np.ndindex(2, 2, 2)]
    for role, truth in transforms.items():
        found = case.alignments[role].transform
        error = max(np.linalg.norm(np.subtract(found.TransformPoint(p), truth.GetInverse().TransformPoint(p)))
                    for p in corners)
        assert error < 6.0, (role, error)


def test_labels_go_back_onto_each_input_grid(moved):
    """On the moved FLAIR's own grid (thick slices, its own pose) the labels sit on the FLAIR's anatomy: the whole
    tumor there matches the ground truth moved the same way."""
    case_id, truth, _, moved_folder, transforms, case, reference, result = moved
    on_flair = labels_on_input_grids(result.labels, case)["flair"]
    flair_grid = sitk.ReadImage(str(moved_folder / f"{case_id}_flair.nii.gz"))
    assert on_flair.GetSize() == flair_grid.GetSize() and on_flair.GetSpacing() == flair_grid.GetSpacing()
    truth_image = sitk.GetImageFromArray(truth)
    truth_image.CopyInformation(reference)
    moved_truth = sitk.Resample(truth_image, flair_grid, transforms["flair"], sitk.sitkNearestNeighbor, 0)
    assert region_dice(sitk.GetArrayFromImage(on_flair), sitk.GetArrayFromImage(moved_truth))["WT"] > 0.7


def test_without_registration_each_moved_input_is_warned_about(moved, pipeline):
    *_, moved_folder, _, _, _, _ = moved
    case, _ = read_case(case_files_in(moved_folder), register="off")
    assert not case.alignments and "register" not in case.stages
    for label in ("T1", "T2", "FLAIR"):
        assert any(warning.startswith(f"{label}'s head outline does not match T1ce's") and "--register auto" in warning
                   for warning in case.warnings), (label, case.warnings)


def write_case(folder, images):
    folder.mkdir()
    for role, image in images.items():
        sitk.WriteImage(image, str(folder / f"{folder.name}_{role}.nii.gz"))
    return case_files_in(folder)


def test_another_patients_t2_on_the_same_grid_is_warned_about_by_default(tmp_path):
    """Issue 33 finding 4: its head lies inside this T1ce's (overlap coefficient 0.997), so `auto` does not register
    it, but its outline does not match (head Dice 0.88): warned with the default settings."""
    images = read_images(brats_case_dir("Brats18_CBICA_AQR_1"))
    images["t2"] = read_images(brats_case_dir("Brats18_CBICA_ASY_1"))["t2"]
    case, _ = read_case(write_case(tmp_path / "Brats18_CBICA_AQR_1", images))
    assert not case.alignments  # not registered: its head lies inside
    assert any(warning.startswith("T2's head outline does not match T1ce's (head overlap 0.8")
               and "another patient's" in warning for warning in case.warnings), case.warnings


def test_inputs_moved_on_the_reference_grid_are_named_with_registration_off(tmp_path):
    """Issue 33 finding 5: T1 and T2 turned and shifted but resampled back onto the T1ce grid."""
    images = read_images(brats_case_dir("Brats18_CBICA_ABM_1"))
    rng = np.random.default_rng(2)
    for role in ("t1", "t2"):
        images[role] = sitk.Resample(images[role], images["t1ce"], random_rigid(rng, images[role], 12.0, 12.0),
                                     sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    case, _ = read_case(write_case(tmp_path / "Brats18_CBICA_ABM_1", images), register="off")
    for label in ("T1", "T2"):
        assert any(warning.startswith(f"{label}'s head outline does not match T1ce's") and "--register auto" in
                   warning for warning in case.warnings), (label, case.warnings)
    assert not any(warning.startswith("FLAIR's") for warning in case.warnings)


@pytest.fixture(scope="module")
def real_images():
    return read_images(brats_case_dir("Brats18_CBICA_ABM_1"))


def test_an_input_covering_too_little_of_the_head_is_an_error(real_images):
    slab = real_images["t2"][:, :, 60:90]  # 30 of 155 slices: a slab, not a head
    with pytest.raises(InputError, match="T2 covers less than half of the T1ce head even after registration"):
        align(real_images["t1ce"], slab, "t2", "t1ce")


def test_a_registration_that_stays_poor_is_a_warning(real_images):
    """Another patient's T2: registered as well as it goes, its brain still does not match this T1ce's."""
    other = read_images(brats_case_dir("Brats18_2013_20_1"))["t2"]  # another patient
    alignment, warnings = align(real_images["t1ce"], other, "t2", "t1ce")
    assert alignment.overlap_after < registration.HEAD_POOR
    assert any(w.startswith("T2 is probably misaligned with T1ce") and "even after registration" in w
               for w in warnings)


def test_a_registration_that_makes_things_worse_is_undone_with_a_warning(real_images, monkeypatch):
    """Fault injection: the optimiser returns a 20-degree turn on an aligned T2."""
    def failed(fixed, moving, fine_fixed, starts, *args):
        wrong = registration.sitk.Euler3DTransform(starts[0])
        wrong.SetRotation(np.deg2rad(20), 0.0, 0.0)
        return wrong

    monkeypatch.setattr(registration, "_rigid", failed)
    alignment, warnings = align(real_images["t1ce"], real_images["t2"], "t2", "t1ce")
    assert not alignment.registered and alignment.overlap_after == alignment.overlap_before > 0.99
    assert any(w.startswith("Registering T2 to T1ce made their alignment worse") and "used as it lies" in w
               for w in warnings)


def test_predict_records_stages_and_writes_each_input_grid(moved, tmp_path):
    """The command line with --register off (no registration to wait for): result.json holds the stages and the
    warnings; --each-input-grid writes the labels on the moved inputs' own grids; summary.csv has a column per
    stage."""
    import json

    from BrainTumorFusionLib.app.cli import main
    from BrainTumorFusionLib.app.records import STAGES, SUMMARY_COLUMNS, summary_row

    case_id, *_, moved_folder = moved[:4]
    files = [f"--{role}={moved_folder / f'{case_id}_{role}.nii.gz'}" for role in ("t1", "t1ce", "t2", "flair")]
    assert main(["predict", *files, "--output-dir", str(tmp_path), "--model", "hafb", "--device", "cpu",
                 "--register", "off", "--each-input-grid"]) == 0
    summary = json.loads((tmp_path / "result.json").read_text())
    assert summary["reference"] == "t1ce" and summary["registration"] == [] and list(summary["stages"]) == ["segment"]
    assert any("FLAIR's head outline does not match T1ce's" in warning for warning in summary["warnings"])
    for role in ("t1", "t2", "flair"):
        written = sitk.ReadImage(str(tmp_path / f"labels_{role}.nrrd"))
        source = sitk.ReadImage(str(moved_folder / f"{case_id}_{role}.nii.gz"))
        assert written.GetSize() == source.GetSize() and written.GetSpacing() == source.GetSpacing()
    row = summary_row({"case_id": "x", "status": "done", "reason": "", "settings": {},
                       "stages": {"register": 12.5, "segment": 3.0}})
    assert [f"{stage}_s" for stage in STAGES] == [c for c in SUMMARY_COLUMNS if c.endswith("_s")]
    assert (row["register_s"], row["skull_strip_s"], row["segment_s"]) == (12.5, "", 3.0)


@pytest.mark.needs("deepbet")
def test_the_chain_reports_progress_strips_the_skull_when_asked_and_cancels():
    """register -> skull-strip in one call: progress for each stage, its seconds recorded; Cancel stops it (here at
    once, before the first registration)."""
    from BrainTumorFusionLib.errors import Cancelled

    case_id = CASES[0]
    messages = []
    case, _ = read_case(case_files_in(brats_case_dir(case_id)), register="off", skull_strip="on",
                        progress=lambda fraction, message: messages.append((fraction, message)))
    assert list(case.stages) == ["skull_strip"] and case.stages["skull_strip"] > 0
    assert messages[0][1].startswith("Skull stripping") and messages[-1] == (1.0, "Inputs prepared")
    assert all(0.0 <= fraction <= 1.0 for fraction, _ in messages)
    # The brain the mask keeps is about the BraTS brain (deepbet on an already stripped T1).
    aligned, _ = read_case(case_files_in(brats_case_dir(case_id)))
    kept = np.count_nonzero(case.image.any(axis=0)) / np.count_nonzero(aligned.image.any(axis=0))
    assert 0.9 < kept <= 1.0
    with pytest.raises(Cancelled):
        read_case(case_files_in(brats_case_dir(case_id)), register="on", should_cancel=lambda: True)

"""The ensemble segmenter: averaging of member probabilities on a real crop, progress, cancel, member checks."""

import numpy as np
import pytest
import torch

from BrainTumorFusionLib.case import Case
from BrainTumorFusionLib.choices import member_names
from BrainTumorFusionLib.engine.catalogue import Catalogue
from BrainTumorFusionLib.engine.inference import choose_device
from BrainTumorFusionLib.engine.pipeline import Ensemble, Model, Pipeline
from BrainTumorFusionLib.engine.postprocessing import regions_to_labels, uncrop
from BrainTumorFusionLib.engine.preprocessing import prepare
from BrainTumorFusionLib.errors import Cancelled, InputError, ModelError
from Testing.plumbing import ConstantGrader, IntensityNet, write_catalogue
from Testing.realdata import real_crop

CPU = choose_device("cpu")
PAD = 6  # zero background around the real crop, so the brain crop is a strict part of the case grid


@pytest.fixture(scope="module")
def real_case():
    """A real tumor crop (48^3 at 1 mm) in a zero background: a small real case."""
    image = np.pad(real_crop((48, 48, 48))[0], [(0, 0)] + [(PAD, PAD)] * 3)
    return Case("real-crop", image.astype(np.float32), np.diag([1.0, 1.0, 1.0, 1.0]), (True,) * 4)


def bright(name, offsets=(1.0, 1.5, 2.0), scale=4.0, spacing_mm=None, patch_size=(32, 32, 32), handles=False):
    """A deterministic IntensityNet member with its own thresholds, spacing and patch size."""
    network = IntensityNet(scale)
    with torch.no_grad():
        network.offsets.copy_(torch.tensor(offsets))
    return Model(name, network.eval(), patch_size=patch_size, spacing_mm=spacing_mm,
                 handles_missing_modalities=handles)


def two_members():
    # Different spacing and patch size: the second member works on a 2 mm grid and is resampled back.
    return [bright("fine"), bright("coarse", offsets=(0.5, 1.0, 2.5), scale=2.0, spacing_mm=(2.0, 2.0, 2.0),
                                   patch_size=(16, 16, 16))]


def ignore(fraction, message):
    pass


def test_ensemble_is_the_mean_of_member_probabilities_before_thresholding(real_case):
    fine, coarse = two_members()
    (p_fine, crop_fine), (p_coarse, crop_coarse) = (m.crop_probabilities(real_case, CPU, ignore)
                                                    for m in (fine, coarse))
    # Both members map their output onto the same brain crop, whatever their own grid.
    brain = prepare(real_case).crop
    assert crop_fine == crop_coarse == brain and brain != tuple(slice(0, n) for n in real_case.image.shape[1:])
    assert p_fine.shape == p_coarse.shape == (3,) + tuple(s.stop - s.start for s in brain)
    mean, crop = Ensemble([fine, coarse]).crop_probabilities(real_case, CPU, ignore)
    assert crop == brain
    np.testing.assert_allclose(mean, (p_fine + p_coarse) / 2, atol=1e-6)
    # The members disagree somewhere, so averaging is not the same as either member.
    assert not np.array_equal(regions_to_labels(p_fine), regions_to_labels(p_coarse))

    result = Pipeline(device="cpu", segmenter=Ensemble([fine, coarse])).run(real_case)
    expected = uncrop(regions_to_labels((p_fine + p_coarse) / 2), brain, real_case.image.shape[1:])
    np.testing.assert_array_equal(result.labels, expected)
    assert (result.labels > 0).any() and result.model == "ensemble (fine + coarse)"


def test_members_of_one_spacing_share_its_preparation_and_one_resampling_back(real_case, monkeypatch):
    from BrainTumorFusionLib.engine import pipeline, preprocessing

    fine, coarse = two_members()
    coarse_too = bright("coarse-too", offsets=(0.8, 1.2, 1.6), spacing_mm=(2.0, 2.0, 2.0), patch_size=(16, 16, 16))
    members = [fine, coarse, coarse_too]
    separate = [m.crop_probabilities(real_case, CPU, ignore)[0] for m in members]
    spacings, back = [], []
    monkeypatch.setattr(pipeline, "prepare", lambda case, spacing: spacings.append(spacing)
                        or preprocessing.prepare(case, spacing))
    to_crop_grid = preprocessing.Prepared.to_crop_grid
    monkeypatch.setattr(preprocessing.Prepared, "to_crop_grid", lambda self, array: back.append(self.resampled)
                        or to_crop_grid(self, array))
    mean, _ = Ensemble(members).crop_probabilities(real_case, CPU, ignore)
    assert spacings == [None, (2.0, 2.0, 2.0)] and back == [False, True]
    # Linear resampling commutes with the mean: the same result as resampling each member back.
    np.testing.assert_allclose(mean, sum(separate) / 3, atol=1e-5)


def test_progress_gives_each_member_a_share_and_ends_at_one(real_case):
    reports = []
    Pipeline(device="cpu", segmenter=Ensemble(two_members())).run(real_case, lambda f, m: reports.append((f, m)))
    fractions = [f for f, _ in reports]
    assert fractions[0] == 0.0 and fractions[-1] == 1.0 and fractions == sorted(fractions)
    first = [f for f, m in reports if "(fine, 1 of 2)" in m]
    second = [f for f, m in reports if "(coarse, 2 of 2)" in m]
    assert first and second and max(first) <= min(second)
    assert max(first) == pytest.approx(0.45) and max(second) == pytest.approx(0.9)


def test_cancel_between_members_stops_before_the_next_one(real_case):
    reports = []
    def first_done():
        return any(f >= 0.5 for f, _ in reports)  # member 1 of 2 owns [0, 0.5]

    with pytest.raises(Cancelled, match="nothing was written"):
        Ensemble(two_members()).crop_probabilities(real_case, CPU, lambda f, m: reports.append((f, m)), first_done)
    assert any("fine" in m for _, m in reports) and not any("coarse" in m for _, m in reports)


def test_cancel_within_a_member(real_case):
    with pytest.raises(Cancelled):
        Pipeline(device="cpu", segmenter=Ensemble(two_members())).run(real_case, should_cancel=lambda: True)


def test_missing_modality_names_the_members_that_cannot_run(real_case):
    no_t1ce = Case("no-t1ce", real_case.image * np.array([1, 0, 1, 1], np.float32)[:, None, None, None],
                   real_case.ijk_to_ras, (True, False, True, True))
    members = [bright("robust", handles=True), bright("strict-a"), bright("strict-b")]
    with pytest.raises(InputError, match=r"'strict-a' needs T1ce; 'strict-b' needs T1ce. Leave strict-a, "
                                         r"strict-b out of the members, or give it \(--t1ce"):
        Pipeline(device="cpu", segmenter=Ensemble(members)).run(no_t1ce)
    result = Pipeline(device="cpu", segmenter=Ensemble([members[0], bright("robust-2", handles=True)])).run(no_t1ce)
    assert result.labels.shape == no_t1ce.image.shape[1:]


@pytest.fixture
def catalogue(tmp_path):
    """Shipped models plus a user catalogue with one more segmentation model and a grading model."""
    write_catalogue(tmp_path, "intensity", IntensityNet().state_dict(), name="extra")
    write_catalogue(tmp_path, "intensity", IntensityNet().state_dict(), name="opted-out", default_ensemble=False)
    return Catalogue.load([write_catalogue(tmp_path, "constant_grader", ConstantGrader().state_dict(),
                                           name="grader", task="grading")])


def test_default_members_are_every_segmentation_model_not_opted_out(catalogue):
    shipped = Catalogue.load()
    assert {"hafb", "segresnet"} <= set(shipped.default_ensemble())
    assert shipped.segmentation_choices() == ["auto"] + shipped.names("segmentation") + ["ensemble"]
    # A model added to a catalogue joins the default without code changes; an opted-out one can still be named.
    assert catalogue.default_ensemble() == sorted(shipped.default_ensemble() + ["extra"])
    assert [e.name for e in catalogue.ensemble_members()] == catalogue.default_ensemble()
    assert [e.name for e in catalogue.ensemble_members(" opted-out, extra ")] == ["opted-out", "extra"]
    assert member_names(["a", " b "]) == member_names("a, b,") == ["a", "b"] and member_names(None) == []


@pytest.mark.parametrize("members, message", [
    ("hafb,nope", r"Unknown ensemble member 'nope'. Available segmentation models: extra, hafb, .*opted-out, "
                  r".*segresnet"),
    ("hafb", r"at least 2 segmentation models, got 1 \(hafb\)\. Choose two or more of: extra, hafb.*; or "
             r"choose a single model instead of 'ensemble'"),
    ("hafb,grader", r"'grader' is a grading model and cannot be an ensemble member. Choose segmentation models"),
    ("hafb,ensemble", r"'ensemble' cannot be a member of an ensemble"),
    ("hafb,segresnet,hafb", r"'hafb' is listed twice"),
])
def test_bad_members_are_refused_with_what_to_choose(catalogue, members, message):
    with pytest.raises(ModelError, match=message):
        Pipeline(model="ensemble", members=members, device="cpu", catalogue=catalogue)


def test_members_need_the_ensemble_model_and_a_lone_catalogue_model_is_refused(catalogue):
    with pytest.raises(ModelError, match="only apply to the model 'ensemble'"):
        Pipeline(model="hafb", members="hafb,segresnet", device="cpu", catalogue=catalogue)
    with pytest.raises(ModelError, match="at least 2 segmentation models, got 1"):
        Ensemble([bright("only")])
    assert Catalogue().segmentation_choices() == [] and Catalogue().default_ensemble() == []


def test_catalogue_ensemble_loads_each_member_with_its_own_settings(catalogue):
    ensemble = Pipeline(model="ensemble", members=["extra", "segresnet"], device="cpu", catalogue=catalogue).segmenter
    assert ensemble.name == "ensemble (extra + segresnet)"
    extra, segresnet = ensemble.members
    assert isinstance(extra.network, IntensityNet) and extra.spacing_mm is None
    assert segresnet.spacing_mm == (2.0, 2.0, 2.0) and segresnet.patch_size == (64, 64, 64)
    assert all(next(m.network.parameters()).device.type == "cpu" for m in ensemble.members)


def test_mirroring_reaches_every_member(real_case):
    from BrainTumorFusionLib.engine.inference import MIRROR_FLIPS

    members = two_members()
    calls = {member.name: 0 for member in members}
    for member in members:
        member.network.register_forward_hook(lambda net, inputs, output, name=member.name: calls.update(
            {name: calls[name] + 1}))
    plain = Pipeline(device="cpu", segmenter=Ensemble(members)).run(real_case)
    once = dict(calls)
    mirrored = Pipeline(device="cpu", segmenter=Ensemble(members), tta="mirror").run(real_case)
    assert all(calls[name] - once[name] == len(MIRROR_FLIPS) * once[name] > 0 for name in calls)
    # Voxel-wise members are flip-equivariant: mirroring changes nothing but the time.
    assert mirrored.volumes_ml == pytest.approx(plain.volumes_ml, abs=0.01)
    with pytest.raises(InputError, match="Unknown test-time augmentation 'sideways'. Use off or mirror."):
        Pipeline(device="cpu", segmenter=Ensemble(members), tta="sideways")

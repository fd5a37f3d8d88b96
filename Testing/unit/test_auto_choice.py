"""The model "auto": which measured choice it takes for the modalities present and the device, why, where the
choice is recorded (Result, summary row, scene attribute), and the clean-up measured with each choice."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from BrainTumorFusionLib.app.records import RunSettings, summary_row
from BrainTumorFusionLib.case import Case
from BrainTumorFusionLib.choices import AUTO
from BrainTumorFusionLib.engine.auto_choice import WORST_WT_FLOOR, choose, collapse_warning, describe, measured_cleanup
from BrainTumorFusionLib.engine.catalogue import AutoTable, Catalogue, MeasuredChoice
from BrainTumorFusionLib.engine.pipeline import Auto, Ensemble, Model, Pipeline
from BrainTumorFusionLib.engine.postprocessing import Cleanup
from BrainTumorFusionLib.errors import InputError, ModelError
from BrainTumorFusionLib.files.cases import find_cases
from BrainTumorFusionLib.files.file_io import read_case
from BrainTumorFusionLib.modalities import MODALITIES
from BrainTumorFusionLib.options import SegmentationOptions

ALL = (True, True, True, True)
NO_FLAIR = (True, True, True, False)


def measured(catalogue, names, wt, tc, et, seconds, worst_wt=0.7):
    return MeasuredChoice(members=tuple((name, catalogue.entries[name].sha256) for name in names),
                          dice={"WT": wt, "TC": tc, "ET": et}, cpu_seconds=seconds, worst_wt=worst_wt)


@pytest.fixture(scope="module")
def shipped():
    return Catalogue.load()


def with_table(catalogue, *choices, limit=10.0):
    return Catalogue(catalogue.entries.values(), AutoTable(choices=choices, cpu_seconds_limit=limit, hardware="test"))


def test_four_modalities_take_the_most_accurate_choice_within_the_cpu_budget(shipped):
    slow = measured(shipped, ["hafb", "missu", "segresnet"], 0.90, 0.85, 0.75, 12.0)
    fast = measured(shipped, ["missu", "segresnet"], 0.88, 0.80, 0.70, 4.0)
    single = measured(shipped, ["hafb"], 0.85, 0.75, 0.65, 2.0)
    catalogue = with_table(shipped, single, slow, fast)
    choice, reason = choose(catalogue, ALL, on_cpu=True)
    assert choice == fast
    assert "ensemble (missu + segresnet)" in reason and "within 10 s per case on a CPU" in reason
    assert "T1, T1ce, T2, FLAIR" in reason and "WT 0.880" in reason
    assert choose(catalogue, ALL, on_cpu=False)[0] == slow  # on a GPU every choice fits the budget


def test_with_a_modality_missing_only_models_that_handle_it_are_taken(shipped):
    catalogue = with_table(shipped, measured(shipped, ["missu", "segresnet"], 0.88, 0.80, 0.70, 4.0),
                           measured(shipped, ["hafb"], 0.85, 0.75, 0.65, 2.0))
    choice, reason = choose(catalogue, NO_FLAIR, on_cpu=True)
    assert choice.model == "hafb" and "T1, T1ce, T2 " in reason


def test_nothing_within_the_budget_takes_the_fastest_and_says_so(shipped):
    catalogue = with_table(shipped, measured(shipped, ["missu", "segresnet"], 0.88, 0.80, 0.70, 14.0),
                           measured(shipped, ["hafb", "missu"], 0.89, 0.80, 0.70, 12.0), limit=10.0)
    choice, reason = choose(catalogue, ALL, on_cpu=True)
    assert describe(choice) == "ensemble (hafb + missu)" and "fastest" in reason and "none stays within" in reason


def test_a_choice_that_collapsed_on_a_validation_case_is_taken_only_when_nothing_else_runs(shipped):
    collapsing = measured(shipped, ["missu", "segresnet"], 0.90, 0.85, 0.75, 4.0, worst_wt=0.35)
    steady = measured(shipped, ["segresnet"], 0.80, 0.75, 0.50, 2.0, worst_wt=0.69)
    weak_hafb = measured(shipped, ["hafb"], 0.80, 0.70, 0.60, 2.0, worst_wt=0.42)
    catalogue = with_table(shipped, collapsing, steady, weak_hafb)
    assert choose(catalogue, ALL, on_cpu=True)[0] == steady
    choice, reason = choose(catalogue, NO_FLAIR, on_cpu=True)  # only hafb runs without FLAIR
    assert choice == weak_hafb and f"below {WORST_WT_FLOOR}" in reason
    assert collapse_warning(steady) == [] and "0.42" in collapse_warning(weak_hafb)[0]


def test_choices_measured_on_other_weights_are_ignored(shipped):
    stale = replace(measured(shipped, ["missu", "segresnet"], 0.95, 0.95, 0.95, 1.0),
                    members=(("missu", "0" * 64), ("segresnet", shipped.entries["segresnet"].sha256)))
    current = measured(shipped, ["segresnet"], 0.80, 0.75, 0.50, 1.0)
    assert choose(with_table(shipped, stale, current), ALL, on_cpu=True)[0] == current
    with pytest.raises(ModelError, match="choose-auto"):
        choose(with_table(shipped, stale), ALL, on_cpu=True)
    with pytest.raises(ModelError, match="no measured 'auto' choice"):
        Pipeline(model=AUTO, device="cpu", catalogue=with_table(shipped, stale))


def test_no_runnable_choice_says_which_modalities_to_give(shipped):
    catalogue = with_table(shipped, measured(shipped, ["missu", "segresnet"], 0.88, 0.80, 0.70, 4.0))
    with pytest.raises(InputError, match="FLAIR.*--flair"):
        choose(catalogue, NO_FLAIR, on_cpu=True)


def test_the_shipped_table_covers_every_subset_of_modalities(shipped):
    """The default model must run wherever one of the shipped models can: every non-empty subset."""
    assert AUTO in shipped.segmentation_choices()
    for mask in range(1, 2 ** len(MODALITIES)):
        present = tuple(bool(mask >> i & 1) for i in range(len(MODALITIES)))
        choice, reason = choose(shipped, present, on_cpu=True)
        assert choice.cpu_seconds <= shipped.auto.cpu_seconds_limit, reason


def test_auto_on_a_real_case_records_its_choice(shipped, brats_dir, tmp_path):
    case_files = next(c for c in find_cases(brats_dir) if c.case_id == "Brats18_CBICA_AQP_1")
    case, _ = read_case(case_files)
    no_flair = replace(case, image=case.image.copy(), present=NO_FLAIR)
    no_flair.image[MODALITIES.index("flair")] = 0
    pipeline = Pipeline(model=AUTO, device="cpu")
    assert isinstance(pipeline.segmenter, Auto)
    result = pipeline.run(no_flair)
    expected, _ = choose(shipped, NO_FLAIR, on_cpu=True)
    assert result.model == describe(expected)
    assert result.model_choice.startswith("auto: ") and "T1, T1ce, T2 " in result.model_choice
    four, _, _ = pipeline.segmenter_for(case)
    assert isinstance(four, (Model, Ensemble)) and four.name == describe(choose(shipped, ALL, on_cpu=True)[0])
    settings = RunSettings.from_catalogue(shipped, SegmentationOptions(model=AUTO))
    every = {name for choice in shipped.auto.choices for name in choice.member_names}
    assert {name for name, _ in settings.members} == every  # new weights of any candidate make results differ
    from BrainTumorFusionLib.app.records import done_record

    row = summary_row(done_record(settings, result, []))
    assert row["model"] == result.model and row["model_choice"] == result.model_choice
    json.dumps(row)


def test_a_malformed_auto_table_is_named_when_the_catalogue_is_loaded(tmp_path):
    path = tmp_path / "catalogue.json"
    path.write_text(json.dumps({"models": [], "auto": {"choices": [{"members": [{"name": "hafb"}], "dice": {},
                                                                    "cpu_seconds": 1}]}}))
    with pytest.raises(ModelError, match=r"field 'auto', choice 1.*'members'"):
        Catalogue.load([path])


def test_a_measured_clean_up_runs_with_its_model_or_ensemble_whoever_chose_it(shipped):
    cleanup = Cleanup(wt_island_ml=0.5, et_island_ml=0.02)
    ensemble = replace(measured(shipped, ["missu", "segresnet"], 0.88, 0.80, 0.70, 4.0), cleanup=cleanup)
    catalogue = with_table(shipped, ensemble, measured(shipped, ["hafb"], 0.85, 0.75, 0.65, 2.0))
    assert measured_cleanup(catalogue, ["segresnet", "missu"]) == cleanup  # the member set, in any order
    assert measured_cleanup(catalogue, ["hafb"]) == Cleanup()  # a row without one: nothing removed
    assert measured_cleanup(catalogue, ["missu"]) == Cleanup()  # no row at all
    assert Ensemble.from_catalogue("segresnet,missu", catalogue).cleanup == cleanup
    stale = replace(ensemble, members=(("missu", "0" * 64), ensemble.members[1]))
    assert measured_cleanup(with_table(shipped, stale), ["missu", "segresnet"]) == Cleanup()  # other weights


def test_the_pipeline_removes_islands_below_the_measured_volumes():
    # Synthetic geometry: a tumor of 27 voxels (1 mm: 0.027 mL) with a 1-voxel island; WT islands below 0.01 mL go.
    image = np.zeros((4, 16, 16, 16), np.float32)
    image[:, 2:14, 2:14, 2:14] = 1.0
    case = Case(name="synthetic", image=image, ijk_to_ras=np.eye(4), present=ALL)
    probabilities = np.zeros((3, 16, 16, 16), np.float32)
    probabilities[0, 5:8, 5:8, 5:8] = 1.0
    probabilities[0, 11, 11, 11] = 1.0

    class Fixed(Model):
        def crop_probabilities(self, case, device, progress, should_cancel=None, precision="auto", tta="off"):
            return probabilities.copy(), (slice(0, 16),) * 3

    model = Fixed(name="fixed", network=torch.nn.Identity())
    assert Pipeline(segmenter=model, device="cpu").run(case).volumes_ml["WT"] == pytest.approx(0.028)
    model.cleanup = Cleanup(wt_island_ml=0.01)
    assert Pipeline(segmenter=model, device="cpu").run(case).volumes_ml["WT"] == pytest.approx(0.027)


def test_a_clean_up_with_an_unknown_step_is_named_when_the_catalogue_is_loaded(tmp_path, shipped):
    path = tmp_path / "catalogue.json"
    member = {"name": "hafb", "weights_sha256": shipped.entries["hafb"].sha256}
    path.write_text(json.dumps({"models": [], "auto": {"choices": [{
        "members": [member], "dice": {"WT": 0.8, "TC": 0.7, "ET": 0.6}, "cpu_seconds": 1,
        "cleanup": {"wt_islands": 0.5}}]}}))
    with pytest.raises(ModelError, match=r"choice 1.*'cleanup'.*wt_island_ml"):
        Catalogue.load([path])

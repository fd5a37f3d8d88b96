"""Training.metrics, Training.evaluate (library pipeline on real cases) and Training.export (catalogue entry)."""

import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from BrainTumorFusionLib.engine.catalogue import Catalogue, ModelEntry, file_sha256, load_network
from BrainTumorFusionLib.engine.pipeline import Model, Pipeline
from BrainTumorFusionLib.engine.postprocessing import regions_to_labels, uncrop
from BrainTumorFusionLib.files.file_io import case_files_in, read_case
from Testing.plumbing import IntensityNet, write_catalogue
from Testing.training.training_support import CASES, brats_case_dir, one_thread, tiny_config, workspace  # noqa: F401
from Training import checkpoint as ckpt
from Training.__main__ import main
from Training.config import TrainConfig
from Training.data import regions_from_labels
from Training.evaluate import COLUMNS, evaluate, load_probabilities, load_trained, read_means
from Training.export import export
from Training.metrics import dice, hd95, lesion_wise_dice
from Training.segmentation import train

pytestmark = pytest.mark.usefixtures("one_thread")
CASE = CASES[0]


# ---------------------------------------------------------------------------------------------- metrics


def brute_force_hd95(a, b, spacing):
    """Surface = voxels with a 6-neighbour outside the mask; all-pairs distances; max of directed 95th pct."""
    def surface(mask):
        padded = np.pad(mask, 1)
        inner = padded[1:-1, 1:-1, 1:-1].copy()
        for axis in range(3):
            for step in (-1, 1):
                inner &= np.roll(padded, step, axis)[1:-1, 1:-1, 1:-1]
        return np.argwhere(mask & ~inner) * np.asarray(spacing)

    pa, pb = surface(a), surface(b)
    distances = np.linalg.norm(pa[:, None] - pb[None], axis=2)
    return max(np.percentile(distances.min(1), 95), np.percentile(distances.min(0), 95))


def test_dice_and_hd95_follow_the_brats_conventions():
    a = np.zeros((20, 20, 20), bool)
    a[5:12, 4:10, 6:15] = True
    assert dice(a, a) == 1.0 and hd95(a, a) == 0.0
    empty = np.zeros_like(a)
    assert dice(empty, empty) == 1.0 and hd95(empty, empty) == 0.0
    assert dice(a, empty) == 0.0
    assert hd95(np.zeros((155, 240, 240), bool), np.pad(a, ((0, 135), (0, 220), (0, 220)))) == pytest.approx(373.13,
                                                                                                              abs=0.01)
    # Two single voxels 5 voxels apart along W at 2 mm: 10 mm.
    p, t = np.zeros_like(a), np.zeros_like(a)
    p[3, 3, 3], t[3, 3, 8] = True, True
    assert hd95(p, t, (1.0, 1.0, 2.0)) == pytest.approx(10.0)
    b = np.zeros_like(a)
    b[7:15, 4:10, 5:13] = True
    assert dice(a, b) == pytest.approx(2 * (a & b).sum() / (a.sum() + b.sum()))
    spacing = (1.5, 1.0, 0.8)
    assert hd95(a, b, spacing) == pytest.approx(brute_force_hd95(a, b, spacing))


@pytest.mark.needs("panoptica")
def test_lesion_wise_dice_counts_every_missed_lesion_and_false_island():
    truth = np.zeros((40, 40, 40), bool)
    truth[5:15, 5:15, 5:15] = True  # a large lesion
    truth[30:34, 30:34, 30:34] = True  # a small one
    found = truth.copy()
    found[30:34, 30:34, 30:34] = False  # the small one missed
    island = truth.copy()
    island[22:24, 2:4, 2:4] = True  # a false 8-voxel island
    assert lesion_wise_dice(truth, truth) == pytest.approx(1.0)
    # One of two lesions found perfectly: detection F1 2/3, matched Dice 1; legacy Dice hardly notices.
    assert lesion_wise_dice(found, truth) == pytest.approx(2 / 3)
    assert dice(found, truth) > 0.95
    assert lesion_wise_dice(island, truth) == pytest.approx(0.8)  # 2 of 3 predicted lesions true, both found
    empty = np.zeros_like(truth)
    assert lesion_wise_dice(empty, empty) == 1.0 and lesion_wise_dice(empty, truth) == 0.0
    assert lesion_wise_dice(truth, empty) == 0.0


# ---------------------------------------------------------------------------------------------- evaluate


@pytest.fixture(scope="module")
def intensity_checkpoint(tmp_path_factory):
    """A checkpoint of the deterministic plumbing network (bright FLAIR = tumor) at 2 mm, as training writes it."""
    folder = tmp_path_factory.mktemp("intensity") / "checkpoints"
    config = TrainConfig(network="intensity", network_config={}, patch_size=[64, 64, 64], spacing=[2.0, 2.0, 2.0],
                         modality_dropout=False, run_dir=str(folder.parent))
    split = {"train": list(CASES[1:]), "validation": [CASE], "seed": 0, "stratified_by": "source_group",
             "groups": {}}
    ckpt.save({"model": IntensityNet().state_dict(), "config": config.to_dict(), "split": split, "step": 0,
               "best": {}, "elapsed_seconds": 0.0, "hardware": "test"}, folder / "last.pt")
    return folder / "last.pt"


@pytest.mark.slow
@pytest.mark.needs("panoptica")
def test_evaluate_runs_the_library_pipeline_and_writes_dice_and_hd95(intensity_checkpoint, tmp_path):
    input_dir, _ = workspace()
    out = tmp_path / "eval.csv"
    assert main(["evaluate", "--checkpoint", str(intensity_checkpoint), "--data-dir", str(input_dir),
                 "--output", str(out), "--device", "cpu", "--save-predictions", str(tmp_path / "pred"),
                 "--save-probabilities", str(tmp_path / "probabilities")]) == 0
    with open(out, newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert tuple(rows[0]) == COLUMNS
    assert [r["case_id"] for r in rows] == [CASE, "mean"]
    values = {k: float(rows[0][k]) for k in COLUMNS[1:-1]}
    assert all(0 <= values[f"dice_{r}"] <= 1 for r in ("WT", "TC", "ET"))
    assert all(0 <= values[f"hd95_{r}"] < 400 for r in ("WT", "TC", "ET"))
    assert all(0 <= values[f"lesion_dice_{r}"] <= 1 for r in ("WT", "TC", "ET"))
    assert values["dice_WT"] > 0.3  # the intensity rule finds much of the edema-bright whole tumor

    # The row is what the library's own pipeline gives, scored independently on the case grid.
    predicted = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "pred" / f"{CASE}_seg.nii.gz")))
    case, _ = read_case(case_files_in(brats_case_dir(CASE)))
    model = Model(name="intensity", network=IntensityNet().eval(), patch_size=(64, 64, 64), spacing_mm=(2.0, 2.0, 2.0))
    np.testing.assert_array_equal(predicted, Pipeline(model=None, device="cpu", segmenter=model).run(case).labels)
    # The saved probabilities (out-of-fold predictions) give the same labels (up to their 1/255 steps).
    probabilities, crop = load_probabilities(tmp_path / "probabilities" / f"{CASE}.npz")
    from_saved = uncrop(regions_to_labels(probabilities), crop, predicted.shape)
    assert (from_saved != predicted).mean() < 1e-4 and (predicted > 0).any()
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(brats_case_dir(CASE) / f"{CASE}_seg.nii.gz")))
    for i, region in enumerate(("WT", "TC", "ET")):
        p, t = regions_from_labels(predicted)[i].astype(bool), regions_from_labels(truth)[i].astype(bool)
        assert values[f"dice_{region}"] == pytest.approx(2 * (p & t).sum() / (p.sum() + t.sum()), abs=1e-4)
    means = read_means(out)
    assert means["cases"] == 1 and means["dice_WT"] == pytest.approx(values["dice_WT"])


@pytest.mark.needs("panoptica")
def test_evaluate_scores_a_catalogue_ensemble_on_its_members_common_split(tmp_path):
    input_dir, _ = workspace()
    split = {"train": list(CASES[1:]), "validation": [CASE]}
    for name in ("bright", "dim"):
        path = write_catalogue(tmp_path, "intensity", IntensityNet().state_dict(), name=name, split=split,
                               spacing_mm=[2.0, 2.0, 2.0])
    catalogue = Catalogue.load([path])
    result = evaluate(None, input_dir, output_csv=tmp_path / "ensemble.csv", device="cpu", progress=False,
                      model="ensemble", members="bright,dim", catalogue=catalogue)
    single = evaluate(None, input_dir, output_csv=tmp_path / "bright.csv", device="cpu", progress=False,
                      model="bright", catalogue=catalogue)
    assert [r["case_id"] for r in result["rows"]] == [CASE]
    assert result["means"]["dice_WT"] == pytest.approx(single["means"]["dice_WT"])  # two identical members
    write_catalogue(tmp_path, "intensity", IntensityNet().state_dict(), name="dim",
                    split={"train": [CASE], "validation": list(CASES[1:])})
    with pytest.raises(ValueError, match="one common validation split"):
        evaluate(None, input_dir, device="cpu", model="ensemble", members="bright,dim",
                 catalogue=Catalogue.load([path]))


# ---------------------------------------------------------------------------------------------- export


def test_trained_hafb_exports_into_a_catalogue_the_library_loads(tmp_path):
    run = train(tiny_config(tmp_path / "run", steps=1, checkpoint_every=1), progress=False)
    metrics = tmp_path / "eval.csv"
    metrics.write_text("case_id,dice_WT,dice_TC,dice_ET,hd95_WT,hd95_TC,hd95_ET,seconds\n"
                       "a,0.8,0.7,0.6,5,6,7,1\nb,0.6,0.5,0.4,7,8,9,1\nmean,0.7,0.6,0.5,6,7,8,1\n")
    catalogue = tmp_path / "catalogue" / "models.json"
    catalogue.parent.mkdir()
    catalogue.write_text(json.dumps({"models": [{"name": "other", "task": "segmentation", "network": "hafb",
                                                 "weights": {"file": "x.pt", "sha256": "0"}}]}))
    assert main(["export", "--checkpoint", str(tmp_path / "run"), "--name", "tiny_hafb", "--catalogue",
                 str(catalogue), "--metrics", str(metrics)]) == 0

    data = json.loads(catalogue.read_text())
    assert [m["name"] for m in data["models"]] == ["other", "tiny_hafb"]  # appended, others kept
    entry = data["models"][1]
    weights = catalogue.parent / entry["weights"]["file"]
    assert entry["weights"]["sha256"] == file_sha256(weights)
    assert entry["task"] == "segmentation" and entry["network"] == "hafb"
    assert entry["handles_missing_modalities"] is True  # hafb trained with modality dropout
    assert entry["spacing_mm"] == [2.0, 2.0, 2.0] and entry["patch_size"] == [32, 32, 32]
    assert entry["window"] == "patch"  # a whole-crop window only where it was measured and asked for
    assert entry["metrics"]["dice"] == {"WT": 0.7, "TC": 0.6, "ET": 0.5} and entry["metrics"]["cases"] == 2
    assert entry["split"]["train"] and entry["split"]["validation"] and entry["training"]["steps"] == 1

    # The library loads it (hash check, strict state_dict), and it is the trained network.
    loaded = load_network(Catalogue.load([catalogue]).entry("tiny_hafb", "segmentation"))
    state = ckpt.load(run["last"])["model"]
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in state.items())
    assert torch.load(weights, weights_only=True).keys() == state.keys()

    # Exporting again under the same name replaces the entry; float16 halves the file and still loads.
    entry16 = export(run["last"], "tiny_hafb", catalogue, dtype="float16", window="whole")
    assert Catalogue.load([catalogue]).entry("tiny_hafb").whole_window
    data = json.loads(catalogue.read_text())
    assert [m["name"] for m in data["models"]] == ["other", "tiny_hafb"]
    assert entry16["training"]["weights_dtype"] == "float16"
    assert weights.stat().st_size < 0.7 * sum(v.numel() * 4 for v in state.values() if v.is_floating_point())
    network16 = load_network(ModelEntry.from_json(entry16, catalogue.parent))
    full, _, _ = load_trained(run["last"])
    x = torch.randn(1, 4, 32, 32, 32)
    with torch.no_grad():
        half_out, full_out = network16(x), full(x)
    assert torch.isfinite(half_out).all()
    torch.testing.assert_close(half_out, full_out, atol=5e-2, rtol=5e-2)

    # A fine-tune of these weights exported under the same name overwrites them, and still records what it started
    # from: the replaced entry and its training budget.
    tuned = train(tiny_config(tmp_path / "tuned", steps=1, checkpoint_every=1, init_from=str(weights)),
                  progress=False)
    record = export(tuned["last"], "tiny_hafb", catalogue)["training"]["initialised_from"]
    assert record["kind"] == "weights" and record["model"] == "tiny_hafb"
    assert record["training"] == entry16["training"]

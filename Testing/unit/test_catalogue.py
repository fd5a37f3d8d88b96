"""Model catalogue: hash-checked loading and every way a weights file or entry can be wrong."""

import json

import numpy as np
import pytest
import torch

from BrainTumorFusionLib.case import Case
from BrainTumorFusionLib.catalogue import SHIPPED_CATALOGUE, Catalogue, cache_folder, load_network
from BrainTumorFusionLib.errors import ModelError
from BrainTumorFusionLib.pipeline import Pipeline
from plumbing import ConstantGrader, IntensityNet, intensity_model, write_catalogue
from realdata import real_crop


def test_shipped_catalogue_entries_are_complete_and_hashes_match():
    catalogue = Catalogue.load()
    for name, entry in catalogue.entries.items():
        network = load_network(entry)  # checks SHA-256 and strict state-dict loading
        assert not network.training, name
    assert json.loads(SHIPPED_CATALOGUE.read_text())["models"] is not None


def test_user_catalogue_loads_and_runs(tmp_path):
    path = write_catalogue(tmp_path, "intensity", IntensityNet().state_dict())
    catalogue = Catalogue.load([path])
    assert "intensity" in catalogue.names("segmentation")
    network = load_network(catalogue.entry("intensity", "segmentation"))
    assert isinstance(network, IntensityNet)


def test_unknown_model_lists_available(tmp_path):
    catalogue = Catalogue.load([write_catalogue(tmp_path, "intensity", IntensityNet().state_dict())])
    with pytest.raises(ModelError, match="Unknown segmentation model 'nope'. Available: .*intensity"):
        catalogue.entry("nope", "segmentation")
    with pytest.raises(ModelError, match="Unknown grading model"):
        catalogue.entry("intensity", "grading")


def test_hash_mismatch_is_refused(tmp_path):
    catalogue = Catalogue.load([write_catalogue(tmp_path, "intensity", IntensityNet().state_dict())])
    other = IntensityNet()
    with torch.no_grad():
        other.offsets.add_(1)
    torch.save(other.state_dict(), tmp_path / "intensity.pt")
    with pytest.raises(ModelError, match="does not match the catalogue"):
        load_network(catalogue.entry("intensity"))


def test_corrupt_file_is_refused(tmp_path):
    path = write_catalogue(tmp_path, "intensity", IntensityNet().state_dict())
    (tmp_path / "intensity.pt").write_bytes(b"not a torch file")
    data = json.loads(path.read_text())
    from BrainTumorFusionLib.catalogue import file_sha256
    data["models"][0]["weights"]["sha256"] = file_sha256(tmp_path / "intensity.pt")
    path.write_text(json.dumps(data))
    with pytest.raises(ModelError, match="cannot be read"):
        load_network(Catalogue.load([path]).entry("intensity"))


def test_weights_that_do_not_fit_the_network_are_refused(tmp_path):
    state = {"offsets": torch.zeros(5)}
    catalogue = Catalogue.load([write_catalogue(tmp_path, "intensity", state)])
    with pytest.raises(ModelError, match="does not fit network 'intensity'"):
        load_network(catalogue.entry("intensity"))


def test_missing_weights_and_incomplete_entry(tmp_path, monkeypatch):
    monkeypatch.setenv("BRAINTUMORFUSION_CACHE", str(tmp_path / "cache"))
    path = write_catalogue(tmp_path, "intensity", IntensityNet().state_dict())
    (tmp_path / "intensity.pt").unlink()
    with pytest.raises(ModelError, match="not found"):
        load_network(Catalogue.load([path]).entry("intensity"))
    assert cache_folder() == tmp_path / "cache"
    path.write_text(json.dumps({"models": [{"name": "x", "task": "segmentation"}]}))
    with pytest.raises(ModelError, match="incomplete"):
        Catalogue.load([path])
    path.write_text("{")
    with pytest.raises(ModelError, match="not valid JSON"):
        Catalogue.load([path])


def test_a_graders_caveat_reaches_the_result_warnings(tmp_path):
    """The catalogue's notes of a grading model (e.g. too few low-grade cases) travel with every grade it gives."""
    caveat = "Only 2 LGG cases: not a validated grader."
    path = write_catalogue(tmp_path, "constant_grader", ConstantGrader().state_dict(), name="grader",
                           task="grading", notes=caveat)
    catalogue = Catalogue.load([path])
    assert catalogue.entry("grader", "grading").details["notes"] == caveat
    image = np.pad(real_crop((48, 48, 48))[0], [(0, 0)] + [(6, 6)] * 3).astype(np.float32)
    case = Case("real-crop", image, np.eye(4), (True,) * 4)
    result = Pipeline(device="cpu", segmenter=intensity_model(), grade=True, grading_model="grader",
                      catalogue=catalogue).run(case)
    assert result.grade_probabilities and f"Grading model 'grader': {caveat}" in result.warnings
    plain = Pipeline(device="cpu", segmenter=intensity_model()).run(case)
    assert not any("Grading model" in warning for warning in plain.warnings)

"""Model catalogue: hash-checked loading and every way a weights file or entry can be wrong."""

import json

import numpy as np
import pytest
import torch

from BrainTumorFusionLib.case import Case
from BrainTumorFusionLib.engine.catalogue import SHIPPED_CATALOGUE, Catalogue, cache_folder, load_network
from BrainTumorFusionLib.engine.pipeline import Pipeline
from BrainTumorFusionLib.errors import ModelError
from Testing.plumbing import ConstantGrader, IntensityNet, intensity_model, write_catalogue
from Testing.realdata import real_crop


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
    from BrainTumorFusionLib.engine.catalogue import file_sha256
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
    with pytest.raises(ModelError, match="entry 1 \\('x'\\): field 'weights' is missing"):
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


def test_a_segmentation_models_caveat_reaches_the_result_warnings(tmp_path):
    """A segmentation entry's notes (e.g. a user's model that collapsed on a case) warn with every result of it."""
    caveat = "Whole-tumor Dice 0.39 on one validation case: check the result."
    path = write_catalogue(tmp_path, "intensity", IntensityNet().state_dict(), name="weak", notes=caveat)
    image = np.pad(real_crop((48, 48, 48))[0], [(0, 0)] + [(6, 6)] * 3).astype(np.float32)
    case = Case("real-crop", image, np.eye(4), (True,) * 4)
    result = Pipeline(model="weak", device="cpu", catalogue=Catalogue.load([path])).run(case)
    assert f"Model 'weak': {caveat}" in result.warnings


def test_shipped_catalogue_loads_with_its_fields():
    shipped = json.loads(SHIPPED_CATALOGUE.read_text())["models"]
    catalogue = Catalogue.load()
    assert catalogue.names() == sorted(model["name"] for model in shipped)
    hafb = catalogue.entry("hafb", "segmentation")
    assert hafb.handles_missing_modalities and hafb.patch_size == (64, 64, 64)
    for model in shipped:  # "window" is read as recorded (the retrained hafb measured better with patches)
        assert catalogue.entries[model["name"]].whole_window == (model.get("window") == "whole")
    assert catalogue.entry("cmg", "grading").details["precision"]["cpu"]["avx512_bf16"] == "bf16"


def test_a_catalogue_that_is_a_list_is_refused_when_loaded(tmp_path):
    path = write_catalogue(tmp_path, "intensity", IntensityNet().state_dict())
    path.write_text(json.dumps(json.loads(path.read_text())["models"]))
    with pytest.raises(ModelError, match=r"catalogue .*catalogue\.json must be an object \{\"models\": \[\.\.\.\]\}"):
        Catalogue.load([path])


@pytest.mark.parametrize("field, value, expected", [
    ("patch_size", [64, 64], "3 positive integers"),
    ("patch_size", [64, 64, 64.5], "3 positive integers"),
    ("spacing_mm", "2.0", "null or 3 positive numbers"),
    ("spacing_mm", [2.0, 2.0], "null or 3 positive numbers"),
    ("name", 7, "a non-empty string"),
    ("network", ["intensity"], "a non-empty string"),
    ("modalities", ["t1", "pd"], "a list of distinct names from"),
    ("handles_missing_modalities", "false", "true or false"),
    ("window", "sliding", '"patch" or "whole"'),
    ("precision", "bf16", "an object"),
    ("precision", {"cpu": "bf16"}, "an object such as {\"cpu\": {\"avx512_bf16\": \"bf16\"}}"),
    ("precision", {"cpu": {"amx_bf16": "half"}}, "an object"),
])
def test_a_malformed_entry_field_is_named_when_the_catalogue_is_loaded(tmp_path, field, value, expected):
    path = write_catalogue(tmp_path, "intensity", IntensityNet().state_dict(), **{field: value})
    with pytest.raises(ModelError) as error:
        Catalogue.load([path])
    message = str(error.value)
    assert message.startswith(f"Model catalogue {path}, entry 1")
    assert f"field '{field}' is {json.dumps(value)}; it must be {expected}" in message
    assert "re-export it with Training's export command" in message


@pytest.mark.parametrize("weights, field", [({"sha256": "0" * 64}, "weights.file"),
                                            ({"file": "intensity.pt"}, "weights.sha256"),
                                            ("intensity.pt", "weights")])
def test_missing_weights_fields_are_named(tmp_path, weights, field):
    path = write_catalogue(tmp_path, "intensity", IntensityNet().state_dict(), weights=weights)
    with pytest.raises(ModelError, match=f"entry 1 \\('intensity'\\): field '{field}' (is missing|is \\\"intensity)"):
        Catalogue.load([path])


def test_an_entry_that_is_not_an_object_is_refused(tmp_path):
    path = tmp_path / "catalogue.json"
    path.write_text(json.dumps({"models": ["hafb"]}))
    with pytest.raises(ModelError, match=r"catalogue .*, entry 1 is \"hafb\", not an object"):
        Catalogue.load([path])


@pytest.mark.parametrize("escaping", ["../../etc/passwd", "/etc/passwd", "sub/intensity.pt"])
def test_weights_outside_the_catalogue_folder_are_refused_when_loaded(tmp_path, escaping):
    path = write_catalogue(tmp_path, "intensity", IntensityNet().state_dict())
    data = json.loads(path.read_text())
    data["models"][0]["weights"]["file"] = escaping
    path.write_text(json.dumps(data))
    with pytest.raises(ModelError, match=f"field 'weights.file' is \"{escaping}\"; it must be a plain file name "
                                         "next to the catalogue"):
        Catalogue.load([path])


def test_a_weights_link_out_of_the_folder_is_not_read_nor_named_for_deletion(tmp_path):
    """A plain name that is a link elsewhere: refused before hashing, so no message says 'delete' that file."""
    outside = tmp_path / "elsewhere.pt"
    outside.write_bytes(b"someone else's file")
    folder = tmp_path / "models"
    folder.mkdir()
    path = write_catalogue(folder, "intensity", IntensityNet().state_dict())
    (folder / "intensity.pt").unlink()
    (folder / "intensity.pt").symlink_to(outside)
    with pytest.raises(ModelError, match="lead outside .*copy it there instead of linking") as error:
        load_network(Catalogue.load([path]).entry("intensity"))
    assert "elete" not in str(error.value)


def missu_catalogue(tmp_path, config):
    from BrainTumorFusionLib import networks

    return write_catalogue(tmp_path, "missu", networks.build("missu").state_dict(), name="my_missu", config=config)


def test_a_config_that_does_not_fit_its_network_is_named_with_its_catalogue(tmp_path):
    """Probe finding 3: `"widths": [4, 8]` for missu ended in a raw ValueError traceback."""
    path = missu_catalogue(tmp_path, {"widths": [4, 8]})
    entry = Catalogue.load([path]).entry("my_missu")
    with pytest.raises(ModelError, match=rf"Model catalogue {path}, entry 1 \('my_missu'\): network 'missu' cannot "
                                         r"be built with its config \{\"widths\": \[4, 8\]\}.*Correct the entry's config"):
        load_network(entry)


def test_the_models_command_reports_a_broken_entry(tmp_path, capsys):
    from BrainTumorFusionLib.app.cli import main

    path = missu_catalogue(tmp_path, {"widths": [4, 8]})
    assert main(["models", "--catalogue", str(path)]) == 1
    out, err = capsys.readouterr()
    assert "BROKEN: Model catalogue" in out and "my_missu" in err
    assert "hafb" in out and "BROKEN" not in out.split("hafb", 1)[1].split("\n", 1)[0]  # shipped entries are fine


@pytest.mark.parametrize("name", ["auto", "Ensemble", "hafb,missu"])
def test_reserved_names_are_refused_with_their_catalogue(tmp_path, name):
    path = write_catalogue(tmp_path, "intensity", IntensityNet().state_dict(), name=name)
    with pytest.raises(ModelError, match=rf"Model catalogue {path}, entry 1.*field 'name' is .*reserved"):
        Catalogue.load([path])


def test_a_name_defined_twice_in_one_catalogue_is_refused(tmp_path):
    path = write_catalogue(tmp_path, "intensity", IntensityNet().state_dict())
    data = json.loads(path.read_text())
    data["models"].append(dict(data["models"][0]))
    path.write_text(json.dumps(data))
    with pytest.raises(ModelError, match=rf"Model catalogue {path} defines 'intensity' more than once \(entries 1, 2\)"):
        Catalogue.load([path])


def test_a_weights_file_with_pickled_objects_is_refused_without_the_advice_to_unpickle_it(tmp_path):
    path = write_catalogue(tmp_path, "intensity", IntensityNet().state_dict())
    torch.save({"offsets": torch.zeros(4), "extra": np.dtype("float32")}, tmp_path / "intensity.pt")
    data = json.loads(path.read_text())
    from BrainTumorFusionLib.engine.catalogue import file_sha256
    data["models"][0]["weights"]["sha256"] = file_sha256(tmp_path / "intensity.pt")
    path.write_text(json.dumps(data))
    with pytest.raises(ModelError, match=r"holds Python objects besides tensors \(numpy.dtype\), which are refused "
                                         "without running them") as raised:
        load_network(Catalogue.load([path]).entry("intensity"))
    assert "weights_only=False" not in str(raised.value) and "reinstall" not in str(raised.value)

"""One options object from the GUI to the engine: every option round-trips GUI -> command line -> record, and bad
settings are refused with the choices. The tests walk the dataclass's fields, so a new option is covered by them as
soon as it is declared."""

import argparse
import dataclasses

import pytest

from BrainTumorFusionLib.app.cli import build_parser
from BrainTumorFusionLib.app.records import RunSettings
from BrainTumorFusionLib.choices import ENSEMBLE
from BrainTumorFusionLib.engine.catalogue import Catalogue
from BrainTumorFusionLib.errors import InputError
from BrainTumorFusionLib.options import GUI_CHOICES, GUI_DEFAULTS, GUI_FIELDS, SegmentationOptions, option


def unusual(option):
    """A value other than the default for every option."""
    choices = option.metadata["choices"]
    if choices:
        return next(choice for choice in reversed(choices) if choice != option.default)
    return {bool: True, str: "other", tuple: ("a", "b")}[type(option.default)]


UNUSUAL = SegmentationOptions(**{option.name: unusual(option) for option in dataclasses.fields(SegmentationOptions)})


@pytest.mark.parametrize("command", ["segment", "predict"])
def test_every_option_round_trips_through_the_command_line(command):
    required = ["--input-dir", "in", "--output-dir", "out"] if command == "segment" else ["--output-dir", "out"]
    args = build_parser().parse_args([command, *required, *UNUSUAL.to_argv()])
    assert SegmentationOptions.from_args(args) == UNUSUAL
    defaults = build_parser().parse_args([command, *required])
    assert SegmentationOptions.from_args(defaults) == SegmentationOptions()


def test_gui_values_become_the_options_and_reach_the_record(tmp_path):
    """What the parameter node holds (GUI_FIELDS) -> options -> the background process's argv -> the record."""
    gui = {name: ",".join(UNUSUAL.members) if name == "members" else getattr(UNUSUAL, name) for name in GUI_FIELDS}
    gui["model"] = ENSEMBLE
    from_gui = SegmentationOptions.from_gui(**gui)
    assert {name: getattr(from_gui, name) for name in GUI_FIELDS if name != "model"} == \
        {name: getattr(UNUSUAL, name) for name in GUI_FIELDS if name != "model"}
    parsed = SegmentationOptions.from_args(build_parser().parse_args(["predict", "--output-dir", "out",
                                                                      *from_gui.to_argv()]))
    assert parsed == from_gui
    catalogue = Catalogue.load()
    record = RunSettings.from_catalogue(catalogue, dataclasses.replace(parsed, members=("hafb", "segresnet"),
                                                                       grading_model="cmg")).as_json()
    assert record["model"] == ENSEMBLE and [m["name"] for m in record["members"]] == ["hafb", "segresnet"]
    assert (record["precision"], record["tta"]) == (parsed.precision, parsed.tta)
    assert record["preparation"] == parsed.preparation()
    assert record["grading_model"]["name"] == "cmg"  # the GUI's grade box was ticked


def test_gui_fields_defaults_and_choices_are_the_options_own():
    defaults = SegmentationOptions()
    assert set(GUI_FIELDS) == {option.name for option in dataclasses.fields(SegmentationOptions)} - {
        "grading_model", "catalogues"}
    assert all(GUI_DEFAULTS[name] == ("" if name == "members" else getattr(defaults, name)) for name in GUI_FIELDS)
    assert GUI_CHOICES["reference"] == ("t1", "t1ce", "t2", "flair") and GUI_CHOICES["tta"] == ("off", "mirror")
    # members count only with the ensemble, whose field alone shows them
    assert SegmentationOptions.from_gui(**{**GUI_DEFAULTS, "members": "hafb,missu"}).members == ()


@pytest.mark.parametrize("name, value, said", [
    ("precision", "fp64", "precision"), ("tta", "sideways", "test-time augmentation"), ("register", "maybe",
     "registration"), ("skull_strip", "yes", "skull stripping"), ("reference", "t1c", "reference"),
    ("device", "gpu", "device")])
def test_an_unknown_setting_is_refused_with_the_choices(name, value, said):
    with pytest.raises(InputError, match=f"Unknown {said} setting '{value}': choose one of"):
        SegmentationOptions(**{name: value})


def test_python_keywords_replace_options_and_unknown_ones_are_named():
    options = SegmentationOptions().with_keywords(model=ENSEMBLE, members="hafb, missu", catalogue_files=["x.json"])
    assert options.members == ("hafb", "missu") and options.catalogues == ("x.json",)  # older spelling kept
    with pytest.raises(InputError, match="Unknown option.*precison.*the options are model, members"):
        SegmentationOptions().with_keywords(precison="fp32")


def test_a_new_option_is_one_field_and_its_use():
    """How an option is added: one field (default, help, choices); the command line, argv, keywords and validation
    follow from it. (Its use is the other edit; a GUI widget binds to it by name in the .ui file, and an option that
    changes results joins records.RunSettings.)"""
    @dataclasses.dataclass(frozen=True)
    class WithSmoothing(SegmentationOptions):
        smoothing: str = option("off", "smooth the labels: off (default) or on", ("off", "on"))

    parser = argparse.ArgumentParser()
    WithSmoothing.add_arguments(parser)
    parsed = WithSmoothing.from_args(parser.parse_args(["--smoothing", "on", "--tta", "mirror"]))
    assert (parsed.smoothing, parsed.tta) == ("on", "mirror")
    assert WithSmoothing.from_args(parser.parse_args(parsed.to_argv())) == parsed
    assert WithSmoothing().with_keywords(smoothing="on").smoothing == "on"
    with pytest.raises(InputError, match="Unknown smoothing setting 'maybe': choose one of off, on"):
        WithSmoothing(smoothing="maybe")

"""Training's command line is generated from the run configurations: every field is an option of its command, with
the help written once on the field and the default of the command's own configuration."""

from dataclasses import fields

import pytest

from Training.__main__ import build_parser
from Training.config import TrainConfig, config_from_args
from Training.grading import GradingConfig
from Training.pretraining import PretrainConfig

COMMANDS = {"train": TrainConfig, "pretrain": PretrainConfig, "train-grader": GradingConfig}


def command_parser(command):
    subparsers = next(action for action in build_parser()._actions if action.dest == "command")
    return subparsers.choices[command]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_configuration_field_is_an_option_of_its_command(command):
    config_class = COMMANDS[command]
    options = {action.dest: action for action in command_parser(command)._actions}
    assert {item.name for item in fields(config_class)} <= set(options)
    for item in fields(config_class):
        assert options[item.name].help.endswith(f"(default {getattr(config_class(), item.name)})"), item.name


def test_a_subclass_that_changes_a_default_keeps_the_fields_words_and_choices():
    train, grader = command_parser("train"), command_parser("train-grader")
    by_dest = {parser: {a.dest: a for a in parser._actions} for parser in (train, grader)}
    assert by_dest[grader]["network"].help.split(" (default")[0] == by_dest[train]["network"].help.split(" (default")[0]
    assert by_dest[grader]["network"].help.endswith("(default cmg)")
    assert by_dest[grader]["schedule"].choices == ("poly", "cosine", "constant")


def test_options_become_the_configuration(tmp_path):
    args = build_parser().parse_args([
        "train", "--network", "segresnet", "--spacing", "native", "--patch-size", "32", "32", "48", "--no-channels-last",
        "--dropout-weights", "1", "0.5", "1", "2", "--network-config", '{"init_filters": 4}', "--folds", "5", "--fold",
        "2", "--run-dir", str(tmp_path)])
    config = config_from_args(TrainConfig, args)
    assert (config.network, config.spacing, config.patch_size, config.channels_last) == ("segresnet", None,
                                                                                        [32, 32, 48], False)
    assert config.dropout_weights == [1.0, 0.5, 1.0, 2.0] and config.network_config == {"init_filters": 4}
    assert (config.folds, config.fold, config.lr) == (5, 2, TrainConfig().lr)  # left out: the default

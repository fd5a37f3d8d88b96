"""The options of a segmentation run, defined once: their defaults, help and validation (the choice lists are in
choices.py), and each form a front end needs - the command line (add_arguments, from_args, to_argv), the GUI's
parameter node (GUI_FIELDS, from_gui), Python keywords (with_keywords) and the per-case record (records.RunSettings).
A new option is one field here plus its use (and, when it changes results, its line in RunSettings).

Torch-free: the GUI process imports it before torch is installed."""

import argparse
from dataclasses import dataclass, field, fields, replace
from typing import Any, Optional

from .choices import (
    AUTO,
    AUTO_CPU_SECONDS_LIMIT,
    DEFAULT_GRADER,
    DEFAULT_MODEL,
    DEFAULT_REFERENCE,
    DEVICES,
    ENSEMBLE,
    PRECISIONS,
    REGISTER_MODES,
    SKULL_STRIP_MODES,
    TTA_MODES,
    member_names,
)
from .errors import InputError
from .modalities import MODALITIES

# Older keyword spellings that console scripts may still use.
KEYWORD_ALIASES = {"catalogue_files": "catalogues"}


def option(default: Any, help: str, choices: Optional[tuple] = None, gui: bool = True, label: str = "",
           **argparse_extra: Any):
    """A field with its help text, choice list, whether the GUI shows it, the words messages use for it (label) and
    extra argparse settings."""
    return field(default=default, metadata={"help": help, "choices": choices, "gui": gui, "label": label,
                                            "argparse": argparse_extra})


@dataclass(frozen=True)
class SegmentationOptions:
    model: str = option(DEFAULT_MODEL, f"'{AUTO}' (default): per case the most accurate measured choice for the "
                        f"modalities present within {AUTO_CPU_SECONDS_LIMIT:g} s per case on a CPU (the models "
                        f"command lists the table); a segmentation model of the catalogue; or '{ENSEMBLE}' to average "
                        "several")
    members: tuple[str, ...] = option((), f"with --model {ENSEMBLE}: comma-separated segmentation models to average "
                                       "(default: every segmentation model of the catalogue; see the models command)",
                                       metavar="A,B,...")
    device: str = option("auto", "auto (default: CUDA when there is a GPU), cpu or cuda", DEVICES)
    precision: str = option("auto", "auto (default): float16 on CUDA, bfloat16 on CPUs with native bfloat16 for "
                             "models whose catalogue entry allows it, else float32", PRECISIONS)
    tta: str = option("off", "test-time augmentation: off (default) or mirror, the mean over the image and its "
                       "mirror images (several times the network time)", TTA_MODES,
                       label="test-time augmentation")
    grade: bool = option(False, "also grade the glioma (HGG vs LGG)")
    grading_model: str = option(DEFAULT_GRADER, "the grading model of the catalogue", gui=False)
    register: str = option("auto", "rigid co-registration of the other inputs onto the reference: auto (default) "
                            "when an input lies on another grid or looks misaligned, on, or off", REGISTER_MODES,
                            label="registration")
    reference: str = option(DEFAULT_REFERENCE, f"the input whose grid the result lies on (default "
                             f"{DEFAULT_REFERENCE}; the first present one when it is absent)", MODALITIES)
    skull_strip: str = option("auto", "brain extraction: auto (default) when an input still has its skull, on, or "
                               "off", SKULL_STRIP_MODES,
                               label="skull stripping")
    catalogues: tuple[str, ...] = option((), "extra model catalogue file (your own trained models); repeatable",
                                          gui=False, flag="--catalogue", metavar="JSON")

    def __post_init__(self):
        # members: a list or "a, b"; catalogues: paths; both kept as tuples of str so that options compare equal
        object.__setattr__(self, "members", tuple(member_names(self.members)))
        object.__setattr__(self, "catalogues", tuple(str(path) for path in self.catalogues))
        for option in fields(self):
            choices = option.metadata["choices"]
            if choices and getattr(self, option.name) not in choices:
                label = option.metadata["label"] or option.name
                raise InputError(f"Unknown {label} setting '{getattr(self, option.name)}': choose one of "
                                 f"{', '.join(choices)}.")

    # ------------------------------------------------------------------------------------------- Python keywords
    def with_keywords(self, **keywords: Any) -> "SegmentationOptions":
        """These options with some replaced by keyword (console: logic.segment(..., model="hafb")); unknown keywords
        are refused with the known ones."""
        keywords = {KEYWORD_ALIASES.get(name, name): value for name, value in keywords.items()}
        unknown = sorted(set(keywords) - {option.name for option in fields(self)})
        if unknown:
            raise InputError(f"Unknown option(s) {', '.join(unknown)}; the options are "
                             f"{', '.join(option.name for option in fields(self))}.")
        return replace(self, **keywords)

    def preparation(self) -> dict[str, str]:
        """The input preparation settings (preparation.assemble_case's register, reference, skull_strip)."""
        return {"register": self.register, "reference": self.reference, "skull_strip": self.skull_strip}

    # ---------------------------------------------------------------------------------------------- command line
    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        for option in fields(cls):
            extra = dict(option.metadata["argparse"])
            flag = extra.pop("flag", "--" + option.name.replace("_", "-"))
            if isinstance(option.default, bool):
                parser.add_argument(flag, dest=option.name, action="store_true", help=option.metadata["help"])
            elif isinstance(option.default, tuple) and flag == "--catalogue":
                parser.add_argument(flag, dest=option.name, action="append", default=[],
                                    help=option.metadata["help"], **extra)
            else:
                parser.add_argument(flag, dest=option.name, default=option.default, help=option.metadata["help"],
                                    choices=option.metadata["choices"], **extra)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "SegmentationOptions":
        return cls(**{option.name: getattr(args, option.name) or option.default for option in fields(cls)})

    def to_argv(self) -> list[str]:
        """The command-line arguments that give these options (add_arguments parses them back)."""
        argv = []
        for option in fields(self):
            value = getattr(self, option.name)
            flag = option.metadata["argparse"].get("flag", "--" + option.name.replace("_", "-"))
            if isinstance(option.default, bool):
                argv += [flag] if value else []
            elif option.name == "catalogues":
                for path in value:
                    argv += [flag, path]
            elif option.name == "members":
                argv += [flag, ",".join(value)] if value else []
            else:
                argv += [flag, value]
        return argv

    # ----------------------------------------------------------------------------------------------------- GUI
    @classmethod
    def from_gui(cls, **values: Any) -> "SegmentationOptions":
        """Options from the parameter node's GUI_FIELDS; the members (a field shown only for the ensemble) count
        only with the ensemble."""
        if values.get("model") != ENSEMBLE:
            values["members"] = ()
        return cls(**values)


# The parameter node's option fields (name -> type; the members as the text the user types) and their defaults.
GUI_FIELDS = {option.name: (str if option.name == "members" else type(option.default))
              for option in fields(SegmentationOptions) if option.metadata["gui"]}
GUI_DEFAULTS = {name: ("" if name == "members" else getattr(SegmentationOptions(), name)) for name in GUI_FIELDS}
GUI_CHOICES = {option.name: option.metadata["choices"] for option in fields(SegmentationOptions)
               if option.metadata["gui"] and option.metadata["choices"]}

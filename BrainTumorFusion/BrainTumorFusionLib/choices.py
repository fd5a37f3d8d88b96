"""The names of a run's settings and their choice lists, defined once at the bottom of the library (no imports), so
that every layer - inference, registration, the catalogue, the options object - reads the same ones."""

from typing import Sequence, Union

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
TTA_MODES = ("off", "mirror")
REGISTER_MODES = ("auto", "on", "off")
SKULL_STRIP_MODES = ("auto", "on", "off")
DEFAULT_REFERENCE = "t1ce"  # it defines the tumor core and is usually the thin-slice 3D series

# Reserved model name: averages the region probabilities of several segmentation models. An entry with
# "default_ensemble": false is left out of the default members (it can still be named as a member).
ENSEMBLE = "ensemble"
# Reserved model name: per case, the most accurate measured choice of the catalogue's "auto" table that runs on
# the modalities present within the time budget (auto_choice.py).
AUTO = "auto"
AUTO_CPU_SECONDS_LIMIT = 10.0  # issue: "runs in at most 10 s per case on the 2-core CPU"
# The models used when none is named: GUI, console, command line and Training all read these two.
DEFAULT_MODEL = AUTO
DEFAULT_GRADER = "cmg"
# Ensemble members: a list of names or one comma-separated string ("hafb, segresnet").
Members = Union[str, Sequence[str], None]


def member_names(members: Members) -> list[str]:
    """Ensemble member names from a list or a comma-separated string ("hafb, segresnet"); [] for none."""
    if not members:
        return []
    items = members.split(",") if isinstance(members, str) else members
    return [name.strip() for name in items if name.strip()]

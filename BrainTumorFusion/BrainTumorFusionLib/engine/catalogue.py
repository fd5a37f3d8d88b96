"""The model catalogue: which trained weights exist, what they need, and hash-checked loading.

Entries live in Resources/models.json (shipped models) and in any extra catalogue JSON a user passes (their
own trained models; each weights file is a plain file name next to that catalogue). Each entry records: name,
title, task (segmentation | grading), network, config, modalities (the ones it needs), handles_missing_modalities,
spacing_mm (I, J, K), patch_size (D, H, W), weights {file, sha256}, training, metrics and notes (e.g. caveats).
"""

import hashlib
import json
import math
import os
import pickle
import re
from dataclasses import dataclass, field, fields
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional, Union

from ..choices import AUTO, AUTO_CPU_SECONDS_LIMIT, ENSEMBLE, Members, member_names
from ..errors import ModelError
from ..modalities import MODALITIES
from .postprocessing import Cleanup

if TYPE_CHECKING:
    import torch

RESOURCES = Path(__file__).resolve().parents[2] / "Resources"
SHIPPED_CATALOGUE = RESOURCES / "models.json"
SHIPPED_WEIGHTS = RESOURCES / "Weights"


def cache_folder() -> Path:
    """User cache for downloaded or user-provided weights (BRAINTUMORFUSION_CACHE overrides)."""
    configured = os.environ.get("BRAINTUMORFUSION_CACHE")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or os.environ.get("LOCALAPPDATA") or Path.home() / ".cache"
    return Path(base) / "BrainTumorFusion"


# Entry fields kept as they are in ModelEntry.details; `precision.cpu` ({CPU bfloat16 kind: "bf16" or "fp32"}) is the
# verdict, measured per kind, that lets precision "auto" use bfloat16 on such CPUs for this model.
DETAILS = ("training", "metrics", "split", "notes", "precision")


# Entries are checked by typed parsing rather than a JSON Schema: messages can say what to do, and Slicer's
# Python needs no extra package.
TASKS = ("segmentation", "grading")
CLEANUP_STEPS = [step.name for step in fields(Cleanup)]
_FIX = "Correct the entry (Resources/models.json holds complete ones) or re-export it with Training's export command."
_REQUIRED = object()
# DETAILS the library reads (notes are shown as warnings, precision.cpu by the pipeline); the others are shown as
# they are.
_DETAIL_TYPES = {"notes": ("a string", lambda v: isinstance(v, str)),
                 "precision": ('an object such as {"cpu": {"avx512_bf16": "bf16"}}',
                               lambda v: isinstance(v, dict) and isinstance(v.get("cpu", {}), dict)
                               and set(v.get("cpu", {}).values()) <= {"bf16", "fp32"})}


def _shown(value: Any) -> str:
    shown = json.dumps(value)
    return shown if len(shown) <= 60 else shown[:57] + "..."


def _field(data: dict, path: str, expected: str, valid: Callable[[Any], bool], where: str, default: Any) -> Any:
    """data[path] (dotted for nested objects) if valid, `default` if absent, else a ModelError naming the field."""
    value = data
    for key in path.split("."):
        if not isinstance(value, dict) or key not in value:
            if default is not _REQUIRED:
                return default
            raise ModelError(f"{where}: field '{path}' is missing; it must be {expected}. {_FIX}")
        value = value[key]
    if not valid(value):
        raise ModelError(f"{where}: field '{path}' is {_shown(value)}; it must be {expected}. {_FIX}")
    return value


def _text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _flag(value: Any) -> bool:
    return isinstance(value, bool)


def _three(value: Any, kinds: tuple[type, ...]) -> bool:
    """3 positive finite numbers of `kinds` (JSON true/false are not numbers)."""
    return isinstance(value, list) and len(value) == 3 and all(
        isinstance(v, kinds) and not isinstance(v, bool) and 0 < v < math.inf for v in value)


def _modality_list(value: Any) -> bool:
    return (isinstance(value, list) and bool(value) and all(isinstance(m, str) and m in MODALITIES for m in value)
            and len(set(value)) == len(value))


def _plain_file_name(value: Any) -> bool:
    """A file name without any folder part (either separator, a drive, '..'): it can only name a file next to
    the catalogue."""
    return (_text(value) and value not in (".", "..")
            and PurePosixPath(value).name == PureWindowsPath(value).name == value)


@dataclass
class ModelEntry:
    name: str
    task: str
    network: str
    weights_file: str
    sha256: str
    title: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    modalities: tuple[str, ...] = MODALITIES
    handles_missing_modalities: bool = False
    spacing_mm: Optional[tuple[float, float, float]] = None
    patch_size: tuple[int, int, int] = (128, 128, 128)
    in_default_ensemble: bool = True
    whole_window: bool = False  # "window": "whole": one window over the whole brain crop (fully convolutional)
    folder: Path = SHIPPED_WEIGHTS
    details: dict[str, Any] = field(default_factory=dict)  # DETAILS: shown, and `precision` read by the pipeline
    source: str = ""  # the catalogue file and position that define it, for messages

    @classmethod
    def from_json(cls, data: Any, folder: Union[str, os.PathLike], where: str = "Catalogue entry") -> "ModelEntry":
        """An entry of a catalogue JSON with every field checked; `where` starts error messages (the file and
        the entry's position, from Catalogue.load). Raises ModelError naming the entry and the field."""
        if not isinstance(data, dict):
            raise ModelError(f"{where} is {_shown(data)}, not an object such as {{\"name\": ..., \"task\": ...}}. "
                             f"{_FIX}")
        if isinstance(data.get("name"), str):
            where = f"{where} ('{data['name']}')"

        def get(path: str, expected: str, valid: Callable[[Any], bool], default: Any = _REQUIRED) -> Any:
            return _field(data, path, expected, valid, where, default)

        text = "a non-empty string"
        name = get("name", "a non-empty string without commas, other than 'auto' and 'ensemble' (reserved)",
                   lambda v: _text(v) and "," not in v and v.strip().lower() not in (AUTO, ENSEMBLE))
        get("weights", 'an object {"file": ..., "sha256": ...}', lambda v: isinstance(v, dict))
        spacing = get("spacing_mm", "null or 3 positive numbers [I, J, K] in mm",
                      lambda v: v is None or _three(v, (int, float)), None)
        return cls(name=name, task=get("task", " or ".join(map(repr, TASKS)), lambda v: v in TASKS),
                   network=get("network", text, _text),
                   weights_file=get("weights.file", "a plain file name next to the catalogue (no folder, no '..')",
                                    _plain_file_name),
                   sha256=get("weights.sha256", text, _text).lower(), title=get("title", text, _text, name),
                   config=get("config", "an object of network arguments", lambda v: isinstance(v, dict), {}),
                   modalities=tuple(get("modalities", f"a list of distinct names from {list(MODALITIES)}",
                                        _modality_list, list(cls.modalities))),
                   handles_missing_modalities=get("handles_missing_modalities", "true or false", _flag, False),
                   in_default_ensemble=get("default_ensemble", "true or false", _flag, True),
                   whole_window=get("window", '"patch" or "whole"', lambda v: v in ("patch", "whole"),
                                    "patch") == "whole",
                   spacing_mm=tuple(spacing) if spacing else None,
                   patch_size=tuple(get("patch_size", "3 positive integers [D, H, W]", lambda v: _three(v, (int,)),
                                        list(cls.patch_size))),
                   folder=Path(folder), source=where,
                   details={k: get(k, *_DETAIL_TYPES[k]) if k in _DETAIL_TYPES else data[k]
                            for k in DETAILS if k in data})

    @property
    def bf16_verdicts(self) -> dict[str, str]:
        """{CPU bfloat16 kind: "bf16" or "fp32"} (`precision.cpu`); {} = never measured: float32 everywhere."""
        return self.details.get("precision", {}).get("cpu", {})

    def weights_path(self) -> Path:
        """The weights file: next to its catalogue, else in the user cache folder; never a file elsewhere."""
        for folder in (self.folder, cache_folder()):
            path = Path(folder) / self.weights_file
            if path.is_file():
                # A link (or a name with a folder in it) could make us read, and name for deletion, any file.
                if path.resolve().parent != Path(folder).resolve():
                    raise ModelError(
                        f"Weights of model '{self.name}' ({path}) lead outside {folder} (to {path.resolve()}). "
                        "The weights file must be a plain file next to the catalogue: copy it there instead of "
                        "linking to it.")
                return path
        raise ModelError(
            f"Weights of model '{self.name}' ({self.weights_file}) not found in {self.folder} or "
            f"{cache_folder()}. Reinstall the extension or copy the file there.")


def file_sha256(path: Union[str, os.PathLike]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class MeasuredChoice:
    """One row of a catalogue's "auto" table: a model or an ensemble, with figures measured on the validation
    cases (four modalities) by `python -m Training choose-auto`."""

    members: tuple[tuple[str, str], ...]  # (name, weights SHA-256) of each network it runs; 2 or more: an ensemble
    dice: dict[str, float]  # validation mean Dice of WT, TC, ET
    cpu_seconds: float  # per case on the measuring CPU (the table's "hardware")
    worst_wt: float = 1.0  # the lowest whole-tumor Dice of a validation case
    cleanup: Cleanup = Cleanup()  # the BraTS clean-up chosen for it on the validation cases (dice is after it)

    @property
    def model(self) -> str:
        return ENSEMBLE if len(self.members) > 1 else self.members[0][0]

    @property
    def member_names(self) -> list[str]:
        return [name for name, _ in self.members]

    @property
    def mean_dice(self) -> float:
        return sum(self.dice.values()) / len(self.dice)


@dataclass(frozen=True)
class AutoTable:
    choices: tuple[MeasuredChoice, ...] = ()
    cpu_seconds_limit: float = AUTO_CPU_SECONDS_LIMIT  # a choice slower than this per case on a CPU is not taken
    hardware: str = ""

    @classmethod
    def from_json(cls, data: Any, where: str) -> "AutoTable":
        def get(item: Any, path: str, expected: str, valid: Callable[[Any], bool], place: str,
                default: Any = _REQUIRED) -> Any:
            return _field(item, path, expected, valid, place, default)

        def number(value: Any) -> bool:
            return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < math.inf

        if not isinstance(data, dict):
            raise ModelError(f"{where} is {_shown(data)}, not an object such as {{\"choices\": [...]}}. {_FIX}")
        rows = get(data, "choices", "a list of measured choices", lambda v: isinstance(v, list), where)
        choices = []
        for number_, row in enumerate(rows, 1):
            place = f"{where}, choice {number_}"
            if not isinstance(row, dict):
                raise ModelError(f"{place} is {_shown(row)}, not an object. {_FIX}")
            members = get(row, "members", 'a list of {"name": ..., "weights_sha256": ...}', lambda v: (
                isinstance(v, list) and bool(v) and all(isinstance(m, dict) and _text(m.get("name"))
                                                        and _text(m.get("weights_sha256")) for m in v)), place)
            dice = get(row, "dice", 'an object {"WT": ..., "TC": ..., "ET": ...} of numbers', lambda v: (
                isinstance(v, dict) and set(v) == {"WT", "TC", "ET"} and all(map(number, v.values()))), place)
            cleanup = get(row, "cleanup", f"an object of volumes in mL with keys from {CLEANUP_STEPS}",
                          lambda v: isinstance(v, dict) and set(v) <= set(CLEANUP_STEPS)
                          and all(map(number, v.values())), place, {})
            choices.append(MeasuredChoice(
                members=tuple((m["name"], m["weights_sha256"].lower()) for m in members), dice=dict(dice),
                cpu_seconds=float(get(row, "cpu_seconds", "a number of seconds", number, place)),
                worst_wt=float(get(row, "worst_wt", "a number from 0 to 1", lambda v: number(v) and v <= 1, place,
                                   1.0)), cleanup=Cleanup(**cleanup)))
        return cls(choices=tuple(choices), hardware=get(data, "hardware", "a string", _text, where, ""),
                   cpu_seconds_limit=float(get(data, "cpu_seconds_limit", "a number of seconds", number, where,
                                                 AUTO_CPU_SECONDS_LIMIT)))


class Catalogue:
    def __init__(self, entries: Iterable[ModelEntry] = (), auto: Optional[AutoTable] = None):
        self.entries: dict[str, ModelEntry] = {}
        for entry in entries:
            self.entries[entry.name] = entry
        self.auto = auto or AutoTable()

    @classmethod
    def load(cls, extra_files: Iterable[Union[str, os.PathLike]] = ()) -> "Catalogue":
        """Shipped catalogue plus extra catalogue files (their entries win on equal names)."""
        entries, auto = [], None
        for path, weights_folder in [(SHIPPED_CATALOGUE, SHIPPED_WEIGHTS)] + [(Path(p), Path(p).parent)
                                                                           for p in extra_files]:
            try:
                data = json.loads(Path(path).read_text())
            except FileNotFoundError:
                raise ModelError(f"Model catalogue {path} not found. Check the path.") from None
            except json.JSONDecodeError as error:
                raise ModelError(f"Model catalogue {path} is not valid JSON ({error}).") from None
            models = data.get("models") if isinstance(data, dict) else None
            if not isinstance(models, list):
                raise ModelError(f"Model catalogue {path} must be an object {{\"models\": [...]}} that lists the "
                                 f"entries; it is {_shown(data)}. Wrap the entries in {{\"models\": [...]}}.")
            loaded = [ModelEntry.from_json(item, weights_folder, f"Model catalogue {path}, entry {number}")
                      for number, item in enumerate(models, 1)]
            names = [entry.name for entry in loaded]
            twice = sorted({name for name in names if names.count(name) > 1})
            if twice:  # a later file may replace an earlier file's entry; one file names each model once
                raise ModelError(f"Model catalogue {path} defines {', '.join(repr(n) for n in twice)} more than once "
                                 f"(entries {', '.join(str(i) for i, n in enumerate(names, 1) if n in twice)}): "
                                 "rename or remove the extra entries.")
            entries += loaded
            if "auto" in data:  # a later file's table replaces an earlier one, as its entries do
                auto = AutoTable.from_json(data["auto"], f"Model catalogue {path}, field 'auto'")
        return cls(entries, auto)

    def names(self, task: Optional[str] = None) -> list[str]:
        return sorted(name for name, entry in self.entries.items() if task in (None, entry.task))

    def entry(self, name: str, task: Optional[str] = None) -> ModelEntry:
        entry = self.entries.get(name)
        if entry is None or (task and entry.task != task):
            known = ", ".join(self.names(task)) or "none yet (no trained weights are installed)"
            raise ModelError(f"Unknown {task or ''} model '{name}'. Available: {known}.".replace("  ", " "))
        return entry

    def segmentation_choices(self) -> list[str]:
        """What a user can pick to segment: "auto" first when the catalogue has a measured table, every
        segmentation model, and "ensemble" when two or more exist."""
        names = self.names("segmentation")
        names = names + [ENSEMBLE] if len(names) >= 2 else names
        return [AUTO] + names if self.auto.choices else names

    def default_ensemble(self) -> list[str]:
        """The ensemble's members when none are named: every segmentation model, except entries that opt out.

        So models added to the catalogue later join the default ensemble without code changes."""
        return [name for name in self.names("segmentation") if self.entries[name].in_default_ensemble]

    def ensemble_members(self, names: Members = None) -> list[ModelEntry]:
        """Entries of an ensemble's members, in the given order (default_ensemble() when none are named).

        `names` is a list or a comma-separated string. Raises ModelError saying what to choose instead."""
        names = member_names(names) or self.default_ensemble()
        available = ", ".join(self.names("segmentation")) or "none"
        for index, name in enumerate(names):
            entry = self.entries.get(name)
            if name in (ENSEMBLE, AUTO):
                raise ModelError(f"'{name}' cannot be a member of an ensemble. List segmentation models: "
                                 f"{available}.")
            if entry is None:
                raise ModelError(f"Unknown ensemble member '{name}'. Available segmentation models: {available}.")
            if entry.task != "segmentation":
                raise ModelError(f"'{name}' is a {entry.task} model and cannot be an ensemble member. Choose "
                                 f"segmentation models: {available}.")
            if name in names[:index]:
                raise ModelError(f"Ensemble member '{name}' is listed twice. List each model once.")
        if len(names) < 2:
            raise ModelError(f"An ensemble needs at least 2 segmentation models, got {len(names)} "
                             f"({', '.join(names) or 'none'}). Choose two or more of: {available}; or choose a "
                             f"single model instead of '{ENSEMBLE}'.")
        return [self.entries[name] for name in names]


def build_network(entry: ModelEntry) -> "torch.nn.Module":
    """The entry's network, untrained: a `config` that does not fit the network is a ModelError naming the entry
    and the catalogue that defines it."""
    from .. import networks

    try:
        return networks.build(entry.network, **entry.config)
    except (KeyError, TypeError, ValueError, AssertionError, IndexError, RuntimeError) as error:
        raise ModelError(f"{entry.source or 'Model ' + repr(entry.name)}: network '{entry.network}' cannot be built "
                         f"with its config {json.dumps(entry.config)} ({error}). Correct the entry's config (the "
                         "network's arguments) or re-export the model.") from None


def load_network(entry: ModelEntry, device: Union[str, "torch.device"] = "cpu") -> "torch.nn.Module":
    """Build the entry's network and load its weights after checking their SHA-256; eval mode."""
    import torch

    path = entry.weights_path()
    actual = file_sha256(path)
    if actual != entry.sha256:
        raise ModelError(
            f"Weights file {path} does not match the catalogue (SHA-256 {actual[:12]}... instead of "
            f"{entry.sha256[:12]}...). It is corrupt or was replaced: delete it and reinstall the extension "
            "or re-export the model.")
    network = build_network(entry)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        if refused is None:
            raise ModelError(f"Weights file {path} cannot be read (it is damaged or not a torch file). Delete it and "
                             "reinstall, or re-export the model.") from None
        # weights_only refused an object: nothing in the file was run; torch's advice to unpickle it is not passed on
        raise ModelError(
            f"Weights file {path} holds Python objects besides tensors ({refused.group(1)}), which are refused "
            "without running them. Use a plain state_dict file (`python -m Training export` writes one) from a source "
            "you trust.") from None
    except Exception as error:  # torch raises many types for unreadable files
        raise ModelError(f"Weights file {path} cannot be read ({error}). Delete it and reinstall.") from None
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    try:
        network.load_state_dict(state, strict=True)
    except (RuntimeError, AttributeError) as error:
        raise ModelError(
            f"Weights file {path} does not fit network '{entry.network}' with the catalogue's configuration: "
            f"{str(error).splitlines()[0]} Re-export the model so weights and catalogue entry agree.") from None
    return network.to(device).eval()

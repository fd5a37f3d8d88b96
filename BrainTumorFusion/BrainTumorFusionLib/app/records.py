"""Per-case records (`<id>.json` in the output folder) and summary.csv, rebuilt from them.

A record says how a case ended (done or failed, and why) and with which settings, so a rerun skips a case only
when its results came from the same settings, and several processes sharing one output folder (the parts of a
cluster array) each add their cases without losing the others': summary.csv is rebuilt from every record in the
folder under a file lock (folder_lock; claims.py takes it too).
"""

import csv
import io
import json
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from filelock import FileLock, Timeout

from .. import __version__
from ..case import Result
from ..choices import AUTO, ENSEMBLE, member_names
from ..engine.catalogue import Catalogue
from ..engine.pipeline import GRADES
from ..errors import ModelError, OutputError
from ..files.file_io import PathLike, write_atomically
from ..measurements.regions import REGIONS
from ..options import SegmentationOptions

RECORD_KIND = "BrainTumorFusion case record"
SUMMARY_NAME = "summary.csv"
LOCK_NAME = ".summary.csv.lock"
LOCK_TIMEOUT_S = 120  # rebuilding takes milliseconds; a lock held this long belongs to a hung file system
STAGES = ("register", "skull_strip", "segment")  # seconds of each stage of a case (Result.stages)
MEASUREMENT_COLUMNS = ("lesions", "measurable_lesions", "spd_mm2")  # from the record's measurements
SUMMARY_COLUMNS = (("case_id", "status") + tuple(f"{name}_ml" for name in REGIONS) + MEASUREMENT_COLUMNS + GRADES
                   + ("seconds", "device", "tta", "model", "model_choice")
                   + tuple(f"{stage}_s" for stage in STAGES) + ("message",))

# Records written before a setting existed were made as its default: such a case is not recomputed for it.
OPTION_DEFAULTS = {"tta": "off"}
Record = dict[str, Any]  # a record's JSON
Row = dict[str, Any]  # one summary.csv row, column -> value


@dataclass(frozen=True)
class RunSettings:
    """What makes results differ; a case is skipped only when its record holds the same settings."""

    model: str  # segmentation model, "ensemble" or "auto"
    members: tuple[tuple[str, str], ...]  # (name, weights SHA-256) of each segmentation network, in order
    grading_model: Optional[tuple[str, str]]  # (name, weights SHA-256) when grading, else None
    precision: str  # as asked: auto, fp32, bf16, fp16 (the precision used is in each record's device)
    tta: str = "off"  # test-time augmentation: off or mirror
    library_version: str = __version__
    # Input preparation (register, reference, skull_strip) as asked: ("register", "auto"), ...; empty for callers
    # that prepare nothing
    preparation: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_catalogue(cls, catalogue: Catalogue, options: SegmentationOptions) -> "RunSettings":
        """Settings of a run, from catalogue entries only (no weights are loaded); unknown names raise
        ModelError."""
        model, members = options.model, options.members
        if members and model != ENSEMBLE:  # as the pipeline would say, but before the batch creates its output folder
            raise ModelError(f"Members ({', '.join(member_names(members))}) only apply to the model '{ENSEMBLE}'; "
                             f"choose model '{ENSEMBLE}' or leave the members out.")
        if model == AUTO:  # every network auto may choose: new weights make results differ
            from ..engine.auto_choice import usable_choices

            names = dict.fromkeys(name for choice in usable_choices(catalogue) for name in choice.member_names)
            entries = [catalogue.entries[name] for name in names]
        elif model == ENSEMBLE:
            entries = catalogue.ensemble_members(members)
        else:
            entries = [catalogue.entry(model, "segmentation")]
        grader = catalogue.entry(options.grading_model, "grading") if options.grade else None
        return cls(model=model, members=tuple((entry.name, entry.sha256) for entry in entries),
                   grading_model=(grader.name, grader.sha256) if grader else None, precision=options.precision,
                   tta=options.tta, preparation=tuple(options.preparation().items()))

    def as_json(self) -> dict[str, Any]:
        """The settings as a record holds them."""
        def model(name_and_hash: tuple[str, str]) -> dict[str, str]:
            return {"name": name_and_hash[0], "weights_sha256": name_and_hash[1]}

        return {"model": self.model, "members": [model(member) for member in self.members],
                "grading_model": model(self.grading_model) if self.grading_model else None,
                "precision": self.precision, "tta": self.tta, "library_version": self.library_version,
                **({"preparation": dict(self.preparation)} if self.preparation else {})}

    def matches(self, recorded: Optional[dict[str, Any]]) -> bool:
        """Whether a record's settings are these (see differences)."""
        return recorded is not None and not self.differences(recorded)

    def differences(self, recorded: dict[str, Any]) -> list[str]:
        """How a record's settings differ from these, in words ("model hafb, now segresnet")."""
        current = self.as_json()
        said = []
        for key, label in (("model", "model"), ("members", "segmentation weights"),
                           ("grading_model", "grading"), ("precision", "precision"),
                           ("tta", "test-time augmentation"), ("library_version", "library version"),
                           ("preparation", "input preparation")):
            before = recorded.get(key, OPTION_DEFAULTS.get(key))
            if before != current.get(key):
                said.append(f"{label} {_words(before)}, now {_words(current.get(key))}")
        return said


def _words(value: Any) -> str:
    """A setting as said in a message: models by name and the start of their weights' SHA-256."""
    if value is None:
        return "none"
    if isinstance(value, dict) and "name" not in value:  # input preparation: {"register": "auto", ...}
        return ", ".join(f"{key} {setting}" for key, setting in value.items())
    if isinstance(value, dict):
        return f"{value.get('name')} ({str(value.get('weights_sha256'))[:12]})"
    if isinstance(value, list):
        return " + ".join(map(_words, value))
    return str(value)


def record_path(output_dir: PathLike, case_id: str) -> Path:
    return Path(output_dir) / f"{case_id}.json"


def read_record(output_dir: PathLike, case_id: str) -> Optional[Record]:
    """The case's record, or None when there is none (or the file is not one of ours)."""
    return _load(record_path(output_dir, case_id))


def _load(path: Path) -> Optional[Record]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # records are written atomically: an unreadable one is not ours
        return None
    return data if isinstance(data, dict) and data.get("record") == RECORD_KIND else None


def done_record(settings: RunSettings, result: Result, outputs: list[str], **details: Any) -> Record:
    return _record(result.case_name, settings, "done", "", outputs=outputs, volumes_ml=result.volumes_ml,
                   grade_probabilities=result.grade_probabilities, model_used=result.model,
                   model_choice=result.model_choice, device=result.device,
                   seconds=result.seconds, stages=result.stages, warnings=result.warnings,
                   measurements=result.measurements.as_json() if result.measurements else None, **details)


def failed_record(case_id: str, settings: RunSettings, reason: str, **details: Any) -> Record:
    return _record(case_id, settings, "failed", reason, **details)


def _record(case_id: str, settings: RunSettings, status: str, reason: str, **fields: Any) -> Record:
    return {"record": RECORD_KIND, "case_id": case_id, "status": status, "reason": reason,
            "settings": settings.as_json(), "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **fields}


def write_record(output_dir: PathLike, record: Record) -> None:
    text = json.dumps(record, indent=1, ensure_ascii=False) + "\n"
    write_atomically(lambda target: Path(target).write_text(text, encoding="utf-8"),
                     record_path(output_dir, record["case_id"]))


def summary_row(record: Record) -> Row:
    row = {"case_id": record["case_id"], "status": record["status"], "seconds": record.get("seconds", ""),
           "device": record.get("device", ""), "tta": record["settings"].get("tta", OPTION_DEFAULTS["tta"]),
           "model": record.get("model_used", ""),
           "model_choice": record.get("model_choice", ""),
           "message": record["reason"] or " ".join(record.get("warnings", []))}
    row.update({f"{name}_ml": value for name, value in (record.get("volumes_ml") or {}).items()})
    measurements = record.get("measurements") or {}
    row.update({column: measurements.get(key, "") for column, key in (
        ("lesions", "lesion_count"), ("measurable_lesions", "measurable_count"), ("spd_mm2", "spd_mm2"))})
    row.update(record.get("grade_probabilities") or {})
    row.update({f"{stage}_s": seconds for stage, seconds in (record.get("stages") or {}).items()})
    return {column: row.get(column, "") for column in SUMMARY_COLUMNS}


def rebuild_summary(output_dir: PathLike) -> None:
    """summary.csv from every record in output_dir, one row per case sorted by case id. The lock makes parts
    that finish a case at the same moment write one after the other, each from all records."""
    output_dir = Path(output_dir)
    with folder_lock(output_dir):
        records = [record for record in map(_load, sorted(output_dir.glob("*.json"))) if record]
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=SUMMARY_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(sorted((summary_row(record) for record in records), key=lambda row: row["case_id"]))
        write_atomically(lambda target: Path(target).write_text(text.getvalue(), encoding="utf-8"),
                         output_dir / SUMMARY_NAME)


@contextmanager
def folder_lock(output_dir: Path):
    """The output folder's lock, taken by every process sharing it (summary.csv, taking over claims)."""
    try:
        with FileLock(output_dir / LOCK_NAME, timeout=LOCK_TIMEOUT_S):
            yield
    except Timeout:
        raise OutputError(f"{output_dir / LOCK_NAME} stayed locked for {LOCK_TIMEOUT_S} s by another process. "
                          "Check that the other runs sharing this output folder are alive and the file system "
                          "supports locks, then run again.") from None

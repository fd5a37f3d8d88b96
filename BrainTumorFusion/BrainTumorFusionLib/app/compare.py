"""The `compare` command: follow-up exams against their baselines, one pair of case folders at a time.

Per pair `<id>` it writes `<id>_baseline.seg.nrrd` and `<id>_follow_up.seg.nrrd` (each exam's labels on its own
reference grid) and `<id>_comparison.json` (both exams' measurements, the changes, matched / new / vanished lesions,
the imaging-only response categories, the registration), then `comparisons.csv` with one row per pair of the run.
A pair that fails is a row with its reason; the others still run.
"""

import csv
import io
import json
import sys
from pathlib import Path
from typing import Any, Callable, Optional

from ..engine.follow_up import compare_exams
from ..engine.pipeline import Pipeline
from ..errors import BrainTumorFusionError, Cancelled, InputError
from ..files.cases import case_in
from ..files.file_io import PathLike, check_writable_folder, read_case, write_atomically
from ..files.seg_nrrd import save_seg_nrrd
from .batch import write_all

COMPARISONS_NAME = "comparisons.csv"
COLUMNS = (("pair_id", "status", "baseline", "follow_up", "category", "volumetric_category")
           + tuple(f"{name}_{when}" for name in ("spd_mm2", "ET_ml", "WT_ml") for when in ("baseline", "follow_up"))
           + ("new_lesions", "vanished_lesions", "message"))
Pair = tuple[str, Path, Path]  # (pair id, baseline folder, follow-up folder)


def read_pairs(path: PathLike) -> list[Pair]:
    """Pairs from a CSV with columns baseline, follow_up and optionally id (folders relative to the CSV's)."""
    path = Path(path)
    try:
        rows = list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8-sig"))))
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"Cannot read the pairs file {path}: {error}.") from None
    if not rows or not {"baseline", "follow_up"} <= set(rows[0]):
        raise InputError(f"{path} needs a header with the columns baseline and follow_up (and optionally id), then "
                         "one row per pair of case folders.")
    pairs = [pair_of(path.parent / row["baseline"], path.parent / row["follow_up"], row.get("id") or None)
             for row in rows]
    ids = [pair_id for pair_id, _, _ in pairs]
    repeated = sorted({pair_id for pair_id in ids if ids.count(pair_id) > 1})
    if repeated:
        raise InputError(f"{path} names the pair {repeated[0]} twice; give each pair its own id (column id).")
    return pairs


def pair_of(baseline: PathLike, follow_up: PathLike, pair_id: Optional[str] = None) -> Pair:
    baseline, follow_up = Path(baseline), Path(follow_up)
    return pair_id or f"{baseline.name}_vs_{follow_up.name}", baseline, follow_up


def _case_files(folder: Path, which: str):
    case = case_in(folder) if folder.is_dir() else None
    if case is None:
        raise InputError(f"The {which} folder {folder} holds no case: give a folder with the exam's "
                         "<id>_t1/_t1ce/_t2/_flair images or its DICOM series.")
    return case


def run_pairs(pairs: list[Pair], output_dir: PathLike, pipeline: Callable[[], Pipeline], preparation: dict,
              should_cancel: Optional[Callable[[], bool]] = None, show_progress: bool = True) -> list[dict[str, Any]]:
    """Compare each pair into output_dir; returns the rows of comparisons.csv."""
    from tqdm import tqdm

    output_dir = Path(output_dir)
    check_writable_folder(output_dir)
    rows, made = [], None
    with tqdm(pairs, unit="pair", disable=not show_progress, dynamic_ncols=True) as bar:
        for pair_id, baseline_dir, follow_up_dir in bar:
            def progress(fraction, message, pair_id=pair_id):
                bar.set_postfix_str(f"{pair_id}: {message} {fraction:.0%}")

            row = {"pair_id": pair_id, "baseline": str(baseline_dir), "follow_up": str(follow_up_dir)}
            try:
                exams = [read_case(_case_files(folder, which), **preparation)
                         for folder, which in ((baseline_dir, "baseline"), (follow_up_dir, "follow-up"))]
                made = made or pipeline()
                result = compare_exams(exams[0][0], exams[1][0], made, progress, should_cancel)
                _write_pair(output_dir, pair_id, result)
                row.update(_row(result), status="done")
            except Cancelled:
                raise
            except BrainTumorFusionError as error:
                row.update(status="failed", message=str(error))
                bar.write(f"{pair_id}: failed: {error}", file=sys.stderr)
            rows.append({column: row.get(column, "") for column in COLUMNS})
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_atomically(lambda target: Path(target).write_text(text.getvalue(), encoding="utf-8"),
                     output_dir / COMPARISONS_NAME)
    return rows


def _write_pair(output_dir: Path, pair_id: str, result) -> None:
    record = {"pair_id": pair_id, **result.comparison.as_json(),
              "registration": result.alignment.as_json(), "warnings": result.warnings,
              "models": {"baseline": result.baseline.model, "follow_up": result.follow_up.model}}
    text = json.dumps(record, indent=1)
    write_all([lambda path: save_seg_nrrd(result.baseline, path), lambda path: save_seg_nrrd(result.follow_up, path),
               lambda path: write_atomically(lambda target: Path(target).write_text(text, encoding="utf-8"), path)],
              [output_dir / f"{pair_id}_{name}" for name in ("baseline.seg.nrrd", "follow_up.seg.nrrd",
                                                             "comparison.json")])


def _row(result) -> dict[str, Any]:
    comparison = result.comparison
    changes = comparison.changes()
    row = {"category": comparison.label(), "volumetric_category": comparison.label(comparison.volumetric_category),
           "new_lesions": len(comparison.new_lesions), "vanished_lesions": len(comparison.vanished_lesions),
           "message": " ".join(comparison.reasons + tuple(result.warnings))}
    for name in ("spd_mm2", "ET_ml", "WT_ml"):
        row[f"{name}_baseline"], row[f"{name}_follow_up"] = changes[name]["baseline"], changes[name]["follow_up"]
    return row

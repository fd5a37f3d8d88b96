"""Batch runs over a folder of cases: progress bar, resume (finished cases are skipped), summary.csv."""

import csv
import io
from pathlib import Path
from typing import Any, Callable, Optional

from .case import Result
from .errors import Cancelled, InputError, ModelError
from .file_io import PathLike, check_writable_folder, find_cases, read_case, write_atomically, write_labels
from .pipeline import GRADES, Pipeline
from .segments import VOLUME_COLUMNS

SUMMARY_NAME = "summary.csv"
SUMMARY_COLUMNS = (("case_id", "status") + tuple(f"{name}_ml" for name in VOLUME_COLUMNS) + GRADES
                   + ("seconds", "device", "model", "message"))


Row = dict[str, Any]  # one summary.csv row, column -> value


def output_paths(output_dir: PathLike, case_id: str) -> tuple[Path, Path]:
    return Path(output_dir) / f"{case_id}.seg.nrrd", Path(output_dir) / f"{case_id}_seg.nii.gz"


class Summary:
    """summary.csv, one row per case, rewritten atomically after every case."""

    def __init__(self, path: PathLike):
        self.path = Path(path)
        self.rows: dict[str, Row] = {}
        if self.path.is_file():
            with open(self.path, newline="") as stream:
                self.rows = {row["case_id"]: row for row in csv.DictReader(stream)}

    def finished(self, case_id: str, output_dir: PathLike) -> bool:
        done = self.rows.get(case_id, {}).get("status") == "done"
        return done and all(path.is_file() for path in output_paths(output_dir, case_id))

    def record(self, row: Row) -> None:
        self.rows[row["case_id"]] = {column: row.get(column, "") for column in SUMMARY_COLUMNS}
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=SUMMARY_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows[key] for key in sorted(self.rows))
        write_atomically(lambda target: Path(target).write_text(text.getvalue()), self.path)


def result_row(result: Result) -> Row:
    row = {"case_id": result.case_name, "status": "done", "seconds": result.seconds, "device": result.device,
           "model": result.model, "message": " ".join(result.warnings)}
    row.update({f"{name}_ml": result.volumes_ml[name] for name in VOLUME_COLUMNS})
    row.update(result.grade_probabilities or {})
    return row


def run_batch(input_dir: PathLike, output_dir: PathLike, pipeline: Pipeline,
              should_cancel: Optional[Callable[[], bool]] = None, show_progress: bool = True,
              overwrite: bool = False) -> list[Row]:
    """Segment every case of input_dir into output_dir; returns the summary rows of this run's cases.

    A case that fails on its own input (missing modality, bad values) is recorded as failed and the run goes
    on; cancelling stops at once and leaves only complete files behind.
    """
    from tqdm import tqdm

    from .scene import save_seg_nrrd  # needs Slicer's MRML (Slicer or the slicer-core wheel)

    cases = find_cases(input_dir)
    check_writable_folder(output_dir)
    summary = Summary(Path(output_dir) / SUMMARY_NAME)
    rows = []
    bar = tqdm(cases, unit="case", disable=not show_progress, dynamic_ncols=True)
    for case_files in bar:
        case_id = case_files.case_id
        if not overwrite and summary.finished(case_id, output_dir):
            bar.set_postfix_str(f"{case_id}: already done, skipped")
            rows.append(summary.rows[case_id])
            continue
        try:
            case, reference = read_case(case_files)
            result = pipeline.run(case, lambda fraction, message: bar.set_postfix_str(
                f"{case_id}: {message} {fraction:.0%}"), should_cancel)
        except (InputError, ModelError) as error:
            row = {"case_id": case_id, "status": "failed", "message": str(error)}
            bar.write(f"{case_id}: failed: {error}")
        else:
            seg_nrrd, seg_nifti = output_paths(output_dir, case_id)
            save_seg_nrrd(result, seg_nrrd)
            write_labels(result.labels, reference, seg_nifti)
            row = result_row(result)
        summary.record(row)
        rows.append(summary.rows[case_id])
        if should_cancel and should_cancel():
            raise Cancelled("Cancelled by the user; finished cases are kept and skipped on the next run.")
    return rows

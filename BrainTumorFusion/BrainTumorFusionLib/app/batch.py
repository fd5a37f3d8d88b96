"""Batch runs over a folder of cases: a record per case, resume, failures kept to their case, parts of a cluster
array sharing one output folder, summary.csv, optional previews.

Per case it writes `<id>.seg.nrrd`, `<id>_seg.nii.gz`, for a case of DICOM series `<id>_seg.dcm` (a DICOM
Segmentation, dicom_io.py) and `<id>_sr.dcm` (its RANO measurements as a DICOM SR, dicom_sr.py), with --preview `<id>_preview.png`, and last its record `<id>.json` (records.py): a case
is done only once its record says so. While a run computes a case it holds the case's claim (claims.py), so a
second run over the same cases leaves it alone; before a case is computed, what an earlier run wrote for it is
removed.
"""

import os
import sys
import time
import traceback
from pathlib import Path
from typing import Callable, Optional, Union

from ..engine.memory import available_bytes, is_allocation_failure, needed_bytes
from ..engine.pipeline import Pipeline
from ..errors import BrainTumorFusionError, Cancelled, InputError, OutputError
from ..files.cases import find_cases
from ..files.file_io import (
    CaseFiles,
    PathLike,
    check_writable_folder,
    read_case,
    reference_grid,
    remove_stale_temporaries,
    write_labels,
)
from ..files.seg_nrrd import save_seg_nrrd
from ..modalities import present_of
from .claims import claim_case, claimed_row, release_claim
from .records import (
    Record,
    Row,
    RunSettings,
    done_record,
    failed_record,
    read_record,
    rebuild_summary,
    record_path,
    summary_row,
    write_record,
)

# Temporaries of a killed run are removed when the next run starts, if older than its start by this margin: a part
# sharing the folder may be writing one at this moment (a temporary is written and renamed within seconds).
STALE_AFTER_S = 60
NAME_MAX = 255  # bytes in one file name on the usual file systems
AvailableMemory = Callable[[], Optional[int]]
MORE_MEMORY = "Free memory (close other programs, run fewer parts per machine) or use a machine with more memory."


def output_names(case_id: str, preview: bool = False, dicom: bool = False) -> list[str]:
    """The files a done case has in the output folder (its record aside); `dicom`: the case came as DICOM series."""
    return ([f"{case_id}.seg.nrrd", f"{case_id}_seg.nii.gz"]
            + ([f"{case_id}_seg.dcm", f"{case_id}_sr.dcm"] if dicom else [])
            + ([f"{case_id}_preview.png"] if preview else []))


def part(case_ids: list[str], num_parts: int, part_id: int) -> list[str]:
    """This part's share of the sorted case ids: case i goes to part i % num_parts (as nnU-Net's predictor splits
    its cases), so N jobs given the same input and parts 0..N-1 each run a disjoint share."""
    return sorted(case_ids)[part_id::num_parts]


def run_batch(input_dir: PathLike, output_dir: PathLike, settings: RunSettings,
              pipeline: Union[Pipeline, Callable[[], Pipeline]], should_cancel: Optional[Callable[[], bool]] = None,
              show_progress: bool = True, overwrite: bool = False, num_parts: int = 1, part_id: int = 0,
              preview: bool = False, available_memory: AvailableMemory = available_bytes) -> list[Row]:
    """Segment this part's cases of input_dir into output_dir; returns their summary rows.

    `pipeline` is a Pipeline or a function making one: it is called at the first case that needs computing, after
    the input folder, the output folder and earlier results have been checked. `settings` are recorded with each
    case and compared with earlier records. `available_memory()` gives the bytes free for a case (None: unknown).

    A case that fails (its input, its output path, too little memory, an error inside the network) is recorded as
    failed and the run goes on. A case another run is computing at the same time is left to it: its row has the
    status "claimed" (claims.claimed_row). Cancelling, or Ctrl-C, stops at once and leaves only complete files
    behind.
    """
    from tqdm import tqdm

    started = time.time()
    output_dir = Path(output_dir)
    problems: dict[str, InputError] = {}
    without_images: list[Path] = []
    cases = {case.case_id: case for case in find_cases(input_dir, problems, dicom=True, exclude=output_dir,
                                                       skipped=without_images)}
    case_ids = part(list(cases) + list(problems), num_parts, part_id)
    check_writable_folder(output_dir)
    remove_stale_temporaries(output_dir, started - STALE_AFTER_S)
    run = _Run(output_dir, settings, pipeline, should_cancel, preview, available_memory,
               frozenset(case_id for case_id, case in cases.items() if case.dicom), overwrite, started)
    if not overwrite:
        run.refuse_other_settings(case_ids)
    for folder in without_images:
        tqdm.write(f"{folder}: no images (<id>_t1/_t1ce/_t2/_flair NIfTI/NRRD or DICOM series); skipped",
                   file=sys.stderr)
    rows = []
    with tqdm(case_ids, unit="case", disable=not show_progress, dynamic_ncols=True) as bar:
        for case_id in bar:
            problem = str(problems[case_id]) if case_id in problems else run.name_problem(cases[case_id])
            rows.append(run.case(case_id, cases.get(case_id), problem, bar))
            if should_cancel and should_cancel():
                raise Cancelled("Cancelled by the user; finished cases are kept and skipped on the next run.")
    return rows


class _Run:
    """What every case of one batch run shares: settings, the pipeline (made at the first case that needs it)."""

    def __init__(self, output_dir: Path, settings: RunSettings, pipeline: Union[Pipeline, Callable[[], Pipeline]],
                 should_cancel: Optional[Callable[[], bool]], preview: bool, available_memory: AvailableMemory,
                 dicom_cases: frozenset[str], overwrite: bool, started: float):
        self.output_dir, self.settings, self.should_cancel = output_dir, settings, should_cancel
        self.preview, self.available_memory, self.dicom_cases = preview, available_memory, dicom_cases
        self.overwrite, self.started = overwrite, started
        self._pipeline = None if callable(pipeline) else pipeline
        self._make_pipeline = pipeline

    def pipeline(self) -> Pipeline:
        if self._pipeline is None:
            self._pipeline = self._make_pipeline()
        return self._pipeline

    def has_outputs(self, case_id: str) -> bool:
        return all((self.output_dir / name).is_file()
                   for name in output_names(case_id, self.preview, case_id in self.dicom_cases))

    def done(self, case_id: str) -> Optional[Record]:
        """The case's record if the case needs no computing: done with these settings and its files there; with
        --overwrite only if written since this run started (by another run of the same command)."""
        record = read_record(self.output_dir, case_id)
        if not (record and record["status"] == "done" and self.settings.matches(record.get("settings"))
                and self.has_outputs(case_id)):
            return None
        if self.overwrite and _modified(record_path(self.output_dir, case_id)) < self.started:
            return None
        return record

    def case(self, case_id: str, case_files: Optional[CaseFiles], problem: Optional[str], bar) -> Row:
        """One case's summary row: failed with `problem`, skipped as done, left to the run that claimed it, or
        computed under this run's claim."""
        if problem is not None:
            record = self.finish(self.failed(case_id, problem), bar)
        elif (record := self.done(case_id)) is not None:
            bar.set_postfix_str(f"{case_id}: already done, skipped")
        else:
            holder = claim_case(self.output_dir, case_id)
            if holder is not None:
                bar.set_postfix_str(f"{case_id}: claimed by another run, skipped")
                return claimed_row(case_id, holder)
            try:  # the other run may have finished the case between the check above and the claim
                record = self.done(case_id) or self.finish(self.segment(case_files, bar), bar)
            finally:
                release_claim(self.output_dir, case_id)
        return summary_row(record)

    def name_problem(self, case_files: CaseFiles) -> Optional[str]:
        """Why the case's output names cannot be written, or None."""
        case_id = case_files.case_id
        longest = max(len(os.fsencode(name)) for name in output_names(case_id, self.preview, case_files.dicom))
        if longest <= NAME_MAX:
            return None
        allowed = NAME_MAX - (longest - len(os.fsencode(case_id)))
        return (f"The case name is too long for its output file names ({longest} bytes; file systems allow "
                f"{NAME_MAX}). Rename the case folder to at most {allowed} bytes.")

    def remove_outputs(self, case_id: str) -> None:
        """Remove what an earlier run wrote for the case (its record's outputs, any output_names, the record), so
        that a recomputed case keeps no file of that run, e.g. a preview beside new labels."""
        record = read_record(self.output_dir, case_id) or {}
        names = set(output_names(case_id, preview=True, dicom=True))
        names.update(name for name in record.get("outputs") or []  # plain names only: a record is no path list
                     if isinstance(name, str) and name == Path(name).name and name != "..")
        for path in [self.output_dir / name for name in sorted(names)] + [record_path(self.output_dir, case_id)]:
            try:
                if path.is_file():  # a folder in a file's place is left to the write, which names it
                    path.unlink()
            except FileNotFoundError:  # removed meanwhile
                pass
            except OSError as error:
                raise OutputError(f"Cannot remove {path}, an earlier result of this case ({error.strerror}). "
                                  "Remove it or make the output folder writable, then run again.") from None

    def refuse_other_settings(self, case_ids: list[str]) -> None:
        """Refuse the whole run, before any model loads or any case is recomputed, when the output folder holds
        results of these cases made with other settings: one folder with two models' results is the mistake this
        guards against, and refusing at the start tells the user while nothing has changed yet, with every case
        concerned, rather than one failed case at a time."""
        clashes = {}
        for case_id in case_ids:
            record = read_record(self.output_dir, case_id)
            if (record and record["status"] == "done" and not self.settings.matches(record.get("settings"))
                    and self.has_outputs(case_id)):
                clashes[case_id] = self.settings.differences(record.get("settings") or {})
        if clashes:
            first, more = next(iter(clashes)), len(clashes) - 1
            raise OutputError(
                f"{self.output_dir} already holds results of {len(clashes)} of these cases made with other settings "
                f"({first}: {'; '.join(clashes[first])}{f'; and {more} more' if more else ''}). Run again with "
                "--overwrite to recompute them with the new settings, or choose another output folder.")

    def segment(self, case_files: CaseFiles, bar) -> Record:
        """Run one case and write its outputs; its failed record when anything goes wrong but a cancel."""
        case_id = case_files.case_id
        pipeline = self.pipeline()  # outside the try: a model that cannot load stops the run, not one case
        names = output_names(case_id, self.preview, case_files.dicom)
        need = free = None
        try:
            self.remove_outputs(case_id)  # after the model loaded: a run that cannot start keeps earlier results
            need, free = self.memory(case_files, pipeline)
            if need is not None and free is not None and need > free:
                limit = getattr(free, "limit", "")  # memory.Headroom: which limit, and how to get more under it
                return self.failed(case_id, (
                    f"Not enough memory for this case: it needs about {_size(need)}, and {_size(free)} is available"
                    f"{f' under {limit}' if limit else ''}. " + (getattr(free, "advice", "") or MORE_MEMORY)))
            def progress(fraction, message):
                bar.set_postfix_str(f"{case_id}: {message} {fraction:.0%}")

            pipeline.check_modalities(present_of(case_files.roles()))  # before registration, which takes time
            # input preparation (registration, skull stripping) as the settings ask; none for settings without it
            case, reference = read_case(case_files, **dict(self.settings.preparation), progress=progress,
                                        should_cancel=self.should_cancel)
            result = pipeline.run(case, progress, self.should_cancel)
            writers = [lambda path: save_seg_nrrd(result, path),
                       lambda path: write_labels(result.labels, reference, path)]
            if case_files.dicom:
                from ..files.dicom_io import write_segmentation
                from ..files.dicom_sr import write_measurement_report

                seg_path = self.output_dir / f"{case_id}_seg.dcm"
                writers += [lambda path: write_segmentation(result, case_files, path),
                            lambda path: write_measurement_report(result.measurements, seg_path, case_files, path,
                                                                  result.model)]
            if self.preview:
                from ..files.preview import write_preview  # Pillow is needed only for previews

                writers.append(lambda path: write_preview(case, result.labels, path))
            write_all(writers, [self.output_dir / name for name in names])
            record = done_record(self.settings, result, names, reference=case.reference_role,
                                 registration=[alignment.as_json() for alignment in case.alignments.values()])
            if case_files.dicom:  # which series gave each role
                record["dicom_series"] = case_files.describe()
            return record
        except Cancelled:
            raise
        except BrainTumorFusionError as error:
            return self.failed(case_id, str(error))
        except Exception as error:  # inside the network or a library: this case fails, the others still run
            if is_allocation_failure(error):  # MemoryError, or torch's / ITK's RuntimeError for a failed allocation
                estimate = f" (estimated to need about {_size(need)} of {_size(free)} free)" if need and free else ""
                return self.failed(case_id, f"Ran out of memory on this case{estimate}. "
                                   + (getattr(free, "advice", "") or MORE_MEMORY))
            return self.failed(case_id, f"Unexpected {type(error).__name__}: {error}. The traceback is in "
                               f"{case_id}.json; please report it.", traceback=traceback.format_exc())

    def failed(self, case_id: str, reason: str, **details) -> Record:
        return failed_record(case_id, self.settings, reason, **details)

    def memory(self, case_files: CaseFiles, pipeline: Pipeline) -> tuple[Optional[int], Optional[int]]:
        """(Bytes the case needs by memory.needed_bytes, bytes available); None where unknown. The grid comes from
        the reference image's header, so nothing large is read before the check."""
        grid = reference_grid(case_files)
        if grid is None:  # read_case says what is wrong with the file
            return None, self.available_memory()
        models = getattr(pipeline.segmenter, "members", [pipeline.segmenter])
        return needed_bytes(*grid, models), self.available_memory()

    def finish(self, record: Record, bar) -> Record:
        """Write the record, rebuild summary.csv, and say when a case failed."""
        if record["status"] != "done":
            bar.write(f"{record['case_id']}: failed: {record['reason']}", file=sys.stderr)
        for warning in record.get("warnings") or []:
            bar.write(f"{record['case_id']}: warning: {warning}", file=sys.stderr)
        try:
            write_record(self.output_dir, record)
        except OutputError as error:  # e.g. a name too long even for the record: the run still goes on
            bar.write(f"{record['case_id']}: its record could not be written: {error}", file=sys.stderr)
            return record
        rebuild_summary(self.output_dir)
        return record


def write_all(writers: list[Callable[[Path], None]], paths: list[Path]) -> None:
    """Each writer writes its file (atomically); if one fails or the run is interrupted, those already written
    are removed too, so a case never has part of its files from this run."""
    written = []
    try:
        for write, path in zip(writers, paths):
            write(path)
            written.append(path)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise


def _modified(path: Path) -> float:
    """When path was last written (time.time() scale); 0 when it is gone."""
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _size(count: int) -> str:
    return f"{count / 2**30:.1f} GB" if count >= 2**30 else f"{count / 2**20:.0f} MB"
